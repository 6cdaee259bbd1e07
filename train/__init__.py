"""Demi's training pipeline: corpus -> tokenizer -> FIM samples -> packed sequences -> trainer -> eval.

Modules, in the order data flows through them:

- `licenses`   read a package's license (SPDX expression, License field, trove classifiers) and
               decide whether it is permissive (MIT, BSD, Apache, PSF, ISC).
- `registry`   packages fetched from the Python and npm registries (pip, npm), license-checked
               per package, unpacked into a local store; one corpus source per package.
- `corpus`     sources (directories, CPython's standard library, site-packages distributions,
               registry packages), reading files with clear errors, exact and near-duplicate
               removal, the held-out split by file or by package, the manifest of what went in.
- `pairs`      docstring-to-code and code-to-docstring chat samples extracted with `ast`.
- `fim`        the fill-in-the-middle transform (PSM and SPM, character level) and repository
               samples with `<|file_sep|>` headers, in exactly the layout `assistant/fim.py` sends.
- `data`       tokenization and packing into fixed-length rows; an epoch is a pure function of
               (seed, epoch), so a position (epoch, row) resumes exactly.
- `moe`        the training-time mixture-of-experts forward: capacity factor, load-balancing
               auxiliary loss and router z-loss.
- `trainer`    AdamW, warmup + cosine, gradient accumulation, clipping, bf16 autocast,
               torch.compile, gradient checkpointing, evaluation, distillation, checkpoints,
               a time budget that fits the run's steps.
- `speed_plan` `auto` precision and compile chosen by timing a few training steps on this CPU,
               cached per CPU and model shape (the inference kernel plan's cache key).
- `fim_probe`  greedy FIM line exact match on held-out lines at each evaluation.
- `curve`      held-out loss and exact match against tokens seen: JSON, a table, the model card.
- `distributed` torchrun: the process group, DDP or FSDP2 around the model, the collectives the
               trainer needs; N processes compute what one process computes with their global batch.
- `checkpoints` atomic training checkpoints (safetensors + JSON, no pickle) and exact resume; the
               sharded layout (torch.distributed.checkpoint) of a distributed run.
- `evaluate`   FIM line exact match and edit similarity on held-out files.
- `passk`      execution-based pass@k on HumanEval-format JSONL, each program in a subprocess.
- `tiny`       the demi-tiny recipe: corpus, tokenizer, model shape and schedule, one command.
- `gpu_recipe` demi-gpu: 62M parameters on the registry corpus in a GPU time budget, one command.
- `bench`      trainer speed (tokens/s) for a model shape and a set of speed switches.

The model itself is the engine's own `demi.model.decoder.Transformer`, saved with
`demi.model.loading.save_model`, so what this package trains loads in Demi and in transformers.
"""
