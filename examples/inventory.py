"""A small inventory module: the file `make demo` explains and completes."""

import json
from pathlib import Path


class OutOfStock(Exception):
    """Raised when an order asks for more items than are in stock."""


def load_stock(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {name: int(count) for name, count in data.items()}


def reserve(stock: dict[str, int], name: str, count: int) -> int:
    available = stock.get(name, 0)
    if count > available:
        raise OutOfStock(f"{name}: {count} asked, {available} in stock")
    stock[name] = available - count
    return stock[name]


def total_items(stock: dict[str, int]) -> int:
    total = 0
    for name, count in stock.items():
        total += count
    return total


def mean_count(stock: dict[str, int]) -> float:
    if not stock:
        return 0.0
    return 
