"""Training the vision-language reasoner of ``--think`` (issue #15), for users with GPUs: Mirage-R1's recipe of a
supervised cold start followed by reinforcement learning with verifiable rewards, on TRL and peft (``aigi[reason]``).

1. ``aigi reason dataset``: a labelled image folder plus the toolkit's own evidence -> an SFT JSONL. Each line has
   the image, the prompt the reasoner sees (:func:`aigi.reasoner.build_prompt`), a *templated* rationale in the
   first-impression / analysis / reflection form ending with the folder's label as the verdict, and
   ``"rationale_source": "templated"``: these rationales bootstrap the answer format, they are no one's reasoning.
   ``difficulty`` is ``easy`` when the fast detector was confident (outside its band), else ``hard``.
2. ``aigi reason sft``: LoRA supervised fine-tuning on that JSONL (TRL ``SFTTrainer``).
3. ``aigi reason grpo``: GRPO (TRL ``GRPOTrainer``) with three verifiable rewards (:func:`rewards`): the verdict is
   right, the answer is well formed, and on easy images a shorter reasoning is better. The weights (1, 0.5, 0.2) and
   the 200-word budget are this toolkit's choice: the paper's reward terms could not be read here.

The output folder holds the LoRA adapter (safetensors) and the processor, loadable with peft; ``--reasoner`` takes
a merged model folder (``aigi reason sft/grpo --merge``) or the base model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aigi.errors import ConfigError
from aigi.reasoner import ANSWER_TAG, AnswerError, build_prompt, parse_answer
from aigi.think import regions_in_words

THINK_TAG = re.compile(r"<think>(.*?)</think>", re.S | re.I)
REWARD_WEIGHTS = {"correct": 1.0, "format": 0.5, "brevity": 0.2}
EASY_BUDGET_WORDS = 200  # an easy image's reasoning earns the brevity reward in full at 0 words, none from here on


def reward_correct(text: str, label: str) -> float:
    """1 when the answer parses and its verdict is the label, else 0."""
    try:
        return float(parse_answer(text).verdict == label)
    except AnswerError:
        return 0.0


def reward_format(text: str) -> float:
    """1 for ``<think>...</think>`` then an ``<answer>`` that parses; 0.5 when the answer parses without that form."""
    try:
        parse_answer(text)
    except AnswerError:
        return 0.0
    shaped = THINK_TAG.search(text) and ANSWER_TAG.search(text) and text.find("<think>") < text.rfind("<answer>")
    return 1.0 if shaped else 0.5


def reward_brevity(text: str, difficulty: str) -> float:
    """On an easy image, the shorter the reasoning the better (1 at no words, 0 at the budget); hard images think as
    long as they need (0: no term). The answer must parse (an empty one earns nothing); a right answer is not
    required here: :func:`reward_correct` weighs that."""
    if difficulty != "easy" or reward_format(text) == 0.0:  # no pay for saying nothing
        return 0.0
    found = THINK_TAG.search(text)
    words = len((found.group(1) if found else text).split())
    return max(0.0, 1.0 - words / EASY_BUDGET_WORDS)


def completion_text(completion) -> str:
    """TRL hands a completion as text or as chat messages; the assistant's text either way."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        parts += (
            [content] if isinstance(content, str) else [c.get("text", "") for c in content if c.get("type") == "text"]
        )
    return "".join(parts)


def rewards() -> list:
    """The three reward functions in TRL's form (``completions`` and the dataset's columns in, floats out)."""

    def correct(completions, label, **_):
        return [reward_correct(completion_text(c), y) for c, y in zip(completions, label)]

    def well_formed(completions, **_):
        return [reward_format(completion_text(c)) for c in completions]

    def brevity(completions, difficulty, **_):
        return [reward_brevity(completion_text(c), d) for c, d in zip(completions, difficulty)]

    return [correct, well_formed, brevity]


def templated_rationale(label: str, evidence: dict) -> str:
    """A rationale in the reasoner's form that ends with ``label``; built from the evidence, marked templated by the
    dataset, never presented as reasoning."""
    p = evidence.get("slow_prob_generated")
    leaning = "generated" if p is not None and p >= evidence.get("threshold", 0.5) else "real"
    first = f"At a glance the detector leans {leaning} (P(generated) {p:.2f})." if p is not None else "No score."
    where = regions_in_words(evidence)
    analysis = f"Its strongest evidence is at the {where}." if where else "It gives no per-patch evidence."
    declared = evidence.get("provenance") or []
    analysis += (" The file declares: " + "; ".join(f["summary"] for f in declared) + ".") if declared else ""
    agrees = leaning == label
    reflection = (
        "The analysis supports the first impression." if agrees else "On reflection the first impression does not hold."
    )
    answer = {
        "verdict": label,
        "confidence": 0.9 if agrees else 0.6,
        "reasons": [first, analysis],
        "evidence_used": ["image", "detector"],
    }
    return f"<think>First impression: {first} Analysis: {analysis} Reflection: {reflection}</think><answer>{json.dumps(answer)}</answer>"


def build_dataset(data: Path, out: Path, progress: bool = True) -> int:
    """The SFT JSONL for the labelled images under ``data`` (any layout ``aigi eval --data`` reads); returns how many
    lines were written (unreadable images are skipped and counted by the caller from the folder)."""
    from aigi import api, think
    from aigi.data.folders import discover
    from aigi.io import write_text

    image_set = discover(data)
    labelled = [s for s in image_set.samples if s.label is not None]
    if not labelled:
        raise ConfigError(f"--data {data}: no labelled images (use 0_real/1_fake folders or a manifest)")
    fast = api.load()
    quick = api.detect(fast, [s.path for s in labelled], progress=progress, use_cache=False)
    slow = think.detect(fast, [s.path for s in labelled], "slow", progress=progress)
    lines = []
    for sample, q, d in zip(labelled, quick, slow):
        if d.prob_generated is None:
            continue
        label = "generated" if sample.label == 1 else "real"
        evidence = d.thinking["evidence"]
        lines.append(
            json.dumps(
                {
                    "image": str(Path(sample.path).resolve()),
                    "prompt": build_prompt(evidence),
                    "completion": templated_rationale(label, evidence),
                    "label": label,
                    "difficulty": "hard" if think.escalation(q) else "easy",
                    "rationale_source": "templated",
                }
            )
        )
    write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = {"image", "prompt", "completion", "label", "difficulty"} - row.keys()
        if missing:
            raise ConfigError(f"{path}:{n}: missing {', '.join(sorted(missing))}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no examples")
    return rows


def _conversation(row: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"]}]}]


def _images(rows: list[dict]):
    from aigi.data.decode import load_image

    return [load_image(Path(r["image"])).image for r in rows]


def _lora(rank: int):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def _load(model: str, allow_download: bool):
    from aigi.reasoner import VLMReasoner

    loaded = VLMReasoner(model, allow_download, option="--model")
    return loaded.model, loaded.processor


def _finish(trainer, processor, out: Path, merge: bool) -> Path:
    trainer.train()
    model = trainer.model.merge_and_unload() if merge else trainer.model
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def sft(
    data: Path,
    model: str,
    out: Path,
    settings: dict,
    lora_r: int = 16,
    allow_download: bool = False,
    merge: bool = False,
) -> Path:
    """LoRA SFT on the JSONL's prompt -> templated completion (TRL ``SFTTrainer``)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = read_jsonl(data)
    messages = [
        [*_conversation(r), {"role": "assistant", "content": [{"type": "text", "text": r["completion"]}]}] for r in rows
    ]
    dataset = Dataset.from_dict({"messages": messages, "images": [[im] for im in _images(rows)]})
    vlm, processor = _load(model, allow_download)
    args = SFTConfig(output_dir=str(out / "trainer"), report_to=[], save_strategy="no", max_length=None, **settings)
    trainer = SFTTrainer(
        model=vlm, args=args, train_dataset=dataset, processing_class=processor, peft_config=_lora(lora_r)
    )
    return _finish(trainer, processor, out, merge)


def check_groups(settings: dict) -> None:
    """GRPO samples ``num_generations`` answers per image, and a step's batch must hold whole groups."""
    import torch.distributed as dist

    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    batch, group = settings.get("per_device_train_batch_size", 8) * processes, settings.get("num_generations", 8)
    if batch % group:
        raise ConfigError(
            f"--batch-size x processes ({batch}) must be a multiple of --num-generations ({group}): each step's batch "
            "holds whole groups of answers to one image"
        )


def grpo(
    data: Path,
    model: str,
    out: Path,
    settings: dict,
    lora_r: int = 16,
    allow_download: bool = False,
    merge: bool = False,
) -> Path:
    """GRPO with the verifiable rewards of :func:`rewards` on the JSONL's images and labels (TRL ``GRPOTrainer``)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    check_groups(settings)
    rows = read_jsonl(data)
    dataset = Dataset.from_dict(
        {
            "prompt": [_conversation(r) for r in rows],
            "image": _images(rows),
            "label": [r["label"] for r in rows],
            "difficulty": [r["difficulty"] for r in rows],
        }
    )
    vlm, processor = _load(model, allow_download)
    args = GRPOConfig(
        output_dir=str(out / "trainer"),
        report_to=[],
        save_strategy="no",
        reward_weights=list(REWARD_WEIGHTS.values()),
        **settings,
    )
    trainer = GRPOTrainer(
        model=vlm,
        reward_funcs=rewards(),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=_lora(lora_r),
    )
    return _finish(trainer, processor, out, merge)
