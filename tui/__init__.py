"""The terminal chat front end (demi-chat)."""
