"""``aigi reason``: build a reasoner's SFT data from labelled images, then train it (SFT, GRPO). See
:mod:`aigi.reasoner_training`; needs the ``reason`` extra (TRL, datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aigi import cli_tables as show
from aigi.cli_errors import AigiGroup
from aigi.errors import ConfigError

reason_app = typer.Typer(
    cls=AigiGroup,
    help="Train a vision-language reasoner for --think --reasoner: SFT data, SFT, GRPO.",
    no_args_is_help=True,
)

DataOpt = Annotated[Path, typer.Option("--data", "-d", help="The JSONL of `aigi reason dataset`.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="A vision-language model: Hugging Face id or folder.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for the LoRA adapter (or merged model) + processor.")]
EpochsOpt = Annotated[float, typer.Option(min=0, help="Epochs over the data.")]
StepsOpt = Annotated[int, typer.Option(help="Stop after this many steps (-1: the epochs decide).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Examples per device per step.")]
LoraOpt = Annotated[int, typer.Option(min=1, help="LoRA rank (all linear layers).")]
MergeOpt = Annotated[bool, typer.Option("--merge", help="Save the model with the adapter merged (for --reasoner).")]
DownloadOpt = Annotated[bool, typer.Option("--allow-download", help="Let the model come from the Hugging Face Hub.")]


def _trl():
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401

        from aigi import reasoner_training
    except ImportError as err:
        raise ConfigError(
            f"aigi reason needs the reason extra ({err.name} is missing): pip install 'aigi[reason]'"
        ) from None
    return reasoner_training


def _device_settings() -> dict:
    import torch

    return {"use_cpu": not torch.cuda.is_available(), "bf16": torch.cuda.is_available()}


@reason_app.command("dataset")
def dataset(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled images (any layout `aigi eval --data` reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL to write.")],
) -> None:
    """Each labelled image with the toolkit's evidence, the reasoner's prompt and a TEMPLATED rationale ending with
    the label (marked "rationale_source": "templated"), as SFT data to bootstrap the answer format."""
    from aigi.reasoner_training import build_dataset

    n = build_dataset(data, out)
    show.say(f"wrote {n} examples to {out} (rationales templated from the evidence, not written by anyone)")


@reason_app.command("sft")
def sft(
    data: DataOpt,
    model: ModelOpt,
    out: OutOpt,
    epochs: EpochsOpt = 1.0,
    max_steps: StepsOpt = -1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-4,
    batch_size: BatchOpt = 1,
    lora_r: LoraOpt = 16,
    merge: MergeOpt = False,
    allow_download: DownloadOpt = False,
) -> None:
    """Supervised fine-tuning with LoRA (TRL SFTTrainer) on prompt -> rationale + answer."""
    training = _trl()
    settings = dict(num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr,
                    per_device_train_batch_size=batch_size, **_device_settings())  # fmt: skip
    training.sft(data, model, out, settings, lora_r, allow_download, merge)
    show.say(f"wrote {out}")


@reason_app.command("grpo")
def grpo(
    data: DataOpt,
    model: ModelOpt,
    out: OutOpt,
    epochs: EpochsOpt = 1.0,
    max_steps: StepsOpt = -1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-5,
    batch_size: BatchOpt = 4,
    num_generations: Annotated[int, typer.Option(min=2, help="Answers sampled per image (the group).")] = 4,
    max_completion_length: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 512,
    lora_r: LoraOpt = 16,
    merge: MergeOpt = False,
    allow_download: DownloadOpt = False,
    beta: Annotated[
        Optional[float], typer.Option(help="KL penalty to the reference model (TRL's default if unset).")
    ] = None,
) -> None:
    """GRPO with verifiable rewards (TRL GRPOTrainer): right verdict (1), well-formed answer (0.5), short reasoning on
    easy images (0.2)."""
    training = _trl()
    settings = dict(num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, per_device_train_batch_size=batch_size,
                    num_generations=num_generations, max_completion_length=max_completion_length,
                    **({} if beta is None else {"beta": beta}), **_device_settings())  # fmt: skip
    training.grpo(data, model, out, settings, lora_r, allow_download, merge)
    show.say(f"wrote {out}")
