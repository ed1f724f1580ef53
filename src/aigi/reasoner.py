"""A vision-language reasoner for the slow path of ``--think`` (issue #15), for users who have one.

Any Hugging Face image-text-to-text model with a chat template (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``; an id or a
local folder) is shown the image and the toolkit's evidence (detector probabilities, the heatmap's hottest regions,
provenance findings) and asked to reason as Mirage-R1 does (Xia et al., arXiv 2508.13223): a first impression
(heuristic), then a careful analysis (analytic), then a reflection that checks one against the other. Its answer
must end with a JSON object inside ``<answer></answer>``, parsed against a strict schema (:class:`Answer`). An answer
that does not parse is asked for once more; if it still does not, it is reported as unparsed with the model's raw
text, never guessed. The paper's exact prompt and tags could not be read here (only its abstract): this prompt
follows its description and R1-style ``<think>``/``<answer>`` tags.

The reasoner's answer is shown beside the evidence; the verdict stays the calibrated slow model's (a general VLM is
not calibrated for this task). Loading follows the toolkit's rule: local files only unless downloads are allowed.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigi.errors import ConfigError, ModelLoadError
from aigi.think import regions_in_words

EVIDENCE = ("image", "detector", "heatmap", "provenance")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


class Answer(BaseModel):
    """What the reasoner must give: exactly these fields."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["generated", "real"]
    confidence: float = Field(ge=0.0, le=1.0)
    reasons: list[str] = Field(min_length=1, max_length=8)
    evidence_used: list[Literal["image", "detector", "heatmap", "provenance"]]


class AnswerError(ValueError):
    """Why a reasoner's text is not a valid answer (one line)."""


def parse_answer(text: str) -> Answer:
    """The answer in ``text``: the JSON object of the last closed ``<answer>...</answer>`` block; without any
    ``<answer>`` tag, the first JSON object after the reasoning (after the last ``</think>``, if any). Checked strictly
    against :class:`Answer` (no type coercion). Raises :class:`AnswerError` saying what is wrong; an ``<answer>``
    left open (e.g. cut off) is an error, never a guess from elsewhere in the text."""
    tagged = ANSWER_TAG.findall(text)
    if tagged:
        body = tagged[-1]
    elif re.search(r"<answer>", text, re.I):
        raise AnswerError("the <answer> block is not closed (cut off?)")
    else:
        body = re.split(r"</think>", text, flags=re.I)[-1]
    obj = _first_json_object(body)
    try:
        return Answer.model_validate(obj, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        kind = "missing field" if first["type"] == "missing" else "invalid"
        raise AnswerError(f"{kind} {where}: {first['msg']}") from None


def _first_json_object(text: str) -> dict:
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", text)]
    if not starts:
        raise AnswerError("no JSON object in the answer")
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(text[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise AnswerError("the answer's JSON does not parse")


def build_prompt(evidence: dict) -> str:
    """Mirage-R1's heuristic -> analytic -> reflect structure, with the toolkit's evidence in plain lines."""
    lines = ["You decide whether this image was made by a generative AI model or is a real photograph.", ""]
    lines += ["Evidence from the aigi toolkit:", *(f"- {line}" for line in evidence_lines(evidence)), ""]
    lines += [
        "Reason in three steps inside <think></think>:",
        "1. First impression: what the image looks like at a glance.",
        "2. Analysis: check lighting, shadows, textures, text, hands and faces, edges and the evidence above.",
        "3. Reflection: does the analysis support the first impression? Revise it if not.",
        'Then give only a JSON object inside <answer></answer> with the keys verdict ("generated" or "real"), '
        "confidence (0 to 1), reasons (a list of short strings) and evidence_used (a list drawn from "
        + ", ".join(f'"{e}"' for e in EVIDENCE)
        + ").",
    ]
    return "\n".join(lines)


RETRY_NOTE = (
    "\n\nYour previous answer could not be read ({why}). Answer again, ending with "
    '<answer>{{"verdict": ..., "confidence": ..., "reasons": [...], "evidence_used": [...]}}</answer>.'
)


def evidence_lines(evidence: dict) -> list[str]:
    p, t = evidence.get("slow_prob_generated"), evidence.get("threshold")
    lines = []
    if p is not None:
        lines.append(
            f"detector: P(generated) {p:.2f} scoring {evidence.get('views') or 'the image'} (threshold {t:.2f})"
        )
    if evidence.get("fast_prob_generated") is not None:
        lines.append(f"detector, quick look: P(generated) {evidence['fast_prob_generated']:.2f}")
    if where := regions_in_words(evidence):
        lines.append(f"heatmap: the detector's strongest evidence is at the {where}")
    declared = [f"{f['summary']} ({f['strength']})" for f in evidence.get("provenance", [])]
    lines.append("provenance: " + ("; ".join(declared) if declared else "the file declares nothing about its origin"))
    return lines


def _placement() -> dict:
    """On a GPU machine the VLM goes to the GPU(s) in bfloat16; on CPU it stays as saved."""
    import torch

    return {"device_map": "auto", "dtype": torch.bfloat16} if torch.cuda.is_available() else {}


class VLMReasoner:
    """A Hugging Face vision-language model that reasons over an image and the toolkit's evidence."""

    def __init__(
        self, source: str, allow_download: bool = False, max_new_tokens: int = 512, option: str = "--reasoner"
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # aigi's output stays its own (and --json stays JSON on a terminal)
        self.source, self.max_new_tokens = str(source), max_new_tokens
        try:
            self.processor = AutoProcessor.from_pretrained(self.source, local_files_only=not allow_download)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.source, local_files_only=not allow_download, **_placement()
            )
        except (OSError, ValueError) as e:
            hint = "" if allow_download else " (downloads are off: give a local folder or --allow-download)"
            raise ModelLoadError(f"{option} {self.source}: cannot load a vision-language model{hint}: {e}") from None
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"{option} {self.source}: its processor has no chat template to prompt it with")
        self.model.eval()

    def generate(self, image: Image.Image, prompt: str) -> str:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]

    def ask(self, image: Image.Image, evidence: dict) -> dict:
        """The reasoner's answer: ``status`` ok (with ``answer``) or unparsed (with ``error``), the raw text and
        how many attempts it took (a second one only after an answer that did not parse)."""
        prompt = build_prompt(evidence)
        for attempt in (1, 2):
            raw = self.generate(image, prompt)
            try:
                answer = parse_answer(raw)
            except AnswerError as e:
                prompt, why = build_prompt(evidence) + RETRY_NOTE.format(why=e), str(e)
                continue
            return {
                "model": self.source,
                "status": "ok",
                "answer": answer.model_dump(),
                "raw": raw,
                "attempts": attempt,
            }
        return {"model": self.source, "status": "unparsed", "error": why, "raw": raw, "attempts": 2}
