"""The vision-language reasoner of ``--think``: strict parsing of its answers, one retry then 'unparsed', the
prompt's evidence, a tiny random VLM loaded from a folder, and its answer shown beside the evidence."""

import json

import pytest
from PIL import Image
from tiny import tiny_vlm_folder
from typer.testing import CliRunner

from aigi import api, think
from aigi.cli import app
from aigi.errors import ModelLoadError
from aigi.reasoner import AnswerError, VLMReasoner, build_prompt, parse_answer

GOOD = {"verdict": "generated", "confidence": 0.8, "reasons": ["waxy skin"], "evidence_used": ["image", "detector"]}
EVIDENCE = {
    "slow_prob_generated": 0.71,
    "fast_prob_generated": 0.52,
    "threshold": 0.66,
    "views": "grid of <= 4 tiles, max logit",
    "hottest_regions": [{"where": "top right"}, {"where": "middle centre"}],
    "provenance": [{"summary": "camera EXIF: Canon EOS R5", "strength": "weak"}],
}


def test_a_valid_answer_parses_with_or_without_tags_and_with_text_around_it():
    tagged = f"<think>looks smooth... on reflection yes</think><answer>{json.dumps(GOOD)}</answer>"
    assert parse_answer(tagged).verdict == "generated"
    assert parse_answer(f"Sure! Here it is: {json.dumps(GOOD)} Hope that helps.").confidence == 0.8
    two = f"<answer>{{bad}}</answer> then <answer>{json.dumps(GOOD)}</answer>"
    assert parse_answer(two).reasons == ["waxy skin"]  # the last answer block counts


@pytest.mark.parametrize(
    "text, why",
    [
        ("I think it is generated.", "no JSON object"),
        ("<answer>{verdict: generated}</answer>", "does not parse"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "reasons"}), "missing field reasons"),
        (json.dumps({**GOOD, "verdict": "fake"}), "invalid verdict"),
        (json.dumps({**GOOD, "confidence": 1.5}), "invalid confidence"),
        (json.dumps({**GOOD, "mood": "sure"}), "invalid mood"),
        (json.dumps({**GOOD, "evidence_used": ["vibes"]}), "invalid evidence_used"),
        (json.dumps({**GOOD, "reasons": []}), "invalid reasons"),
        (json.dumps({**GOOD, "confidence": "0.9"}), "invalid confidence"),  # no coercion
        (f'<think>draft {json.dumps(GOOD)}</think><answer>{{"verdict": "real"', "not closed"),  # cut off
        (f"<think>draft {json.dumps(GOOD)}</think> so: real", "no JSON object"),  # a draft is not the answer
    ],
)
def test_malformed_answers_say_what_is_wrong(text, why):
    with pytest.raises(AnswerError, match=why):
        parse_answer(text)


def test_the_prompt_goes_from_first_impression_to_analysis_to_reflection_with_the_evidence():
    prompt = build_prompt(EVIDENCE)
    steps = [prompt.index(s) for s in ("First impression", "Analysis", "Reflection", "<answer>")]
    assert steps == sorted(steps)
    for shown in ("0.71", "0.52", "threshold 0.66", "top right, middle centre", "camera EXIF: Canon EOS R5 (weak)"):
        assert shown in prompt


class Scripted(VLMReasoner):
    """A reasoner whose model says what the test scripts."""

    def __init__(self, replies):
        self.source, self.replies, self.prompts = "scripted", list(replies), []

    def generate(self, image, prompt):
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_one_retry_after_an_unreadable_answer_then_reported_never_guessed():
    image = Image.new("RGB", (32, 32))
    second_time = Scripted(["it is fake", f"<answer>{json.dumps(GOOD)}</answer>"])
    ok = second_time.ask(image, EVIDENCE)
    assert ok["status"] == "ok" and ok["attempts"] == 2 and ok["answer"]["verdict"] == "generated"
    assert "could not be read (no JSON object" in second_time.prompts[1]
    never = Scripted(["fake", "still fake", "unused"]).ask(image, EVIDENCE)
    assert never["status"] == "unparsed" and never["attempts"] == 2 and "answer" not in never
    assert never["raw"] == "still fake" and "no JSON object" in never["error"]


def test_a_tiny_random_vlm_loads_from_a_folder_and_its_babble_is_reported_unparsed(tmp_path):
    reasoner = VLMReasoner(tiny_vlm_folder(tmp_path), max_new_tokens=12)
    result = reasoner.ask(Image.new("RGB", (40, 30), (200, 10, 10)), EVIDENCE)
    assert result["status"] == "unparsed" and result["attempts"] == 2 and isinstance(result["raw"], str)


def test_a_missing_reasoner_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="downloads are off"):
        VLMReasoner(str(tmp_path / "nowhere"))


def test_the_answer_sits_beside_the_evidence_and_the_verdict_stays_the_models(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (120, 90), (30, 140, 60)).save(path)
    fast = api.load()
    plain = think.detect(fast, [path], "slow")[0]
    with_vlm = think.detect(fast, [path], "slow", reasoner=Scripted([f"<answer>{json.dumps(GOOD)}</answer>"]))[0]
    assert with_vlm.verdict == plain.verdict and with_vlm.prob_generated == plain.prob_generated
    assert (
        with_vlm.thinking["reasoner"]["answer"] == GOOD and with_vlm.thinking["evidence"] == plain.thinking["evidence"]
    )


def test_cli_reasoner_from_a_folder_and_its_misuse(tmp_path):
    folder = tiny_vlm_folder(tmp_path)
    path = tmp_path / "a.png"
    Image.new("RGB", (120, 90), (30, 140, 60)).save(path)
    res = CliRunner().invoke(app, ["detect", str(path), "--think", "slow", "--reasoner", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    reasoner = json.loads(res.output)["results"][0]["thinking"]["reasoner"]
    assert reasoner["model"] == str(folder) and reasoner["status"] == "unparsed"  # a random model babbles
    table = CliRunner().invoke(app, ["detect", str(path), "--think", "slow", "--reasoner", str(folder)])
    assert table.exit_code == 0 and str(folder) in table.output
    bad = CliRunner().invoke(app, ["detect", str(path), "--reasoner", str(folder)])
    assert bad.exit_code == 2 and "--think slow" in bad.output
