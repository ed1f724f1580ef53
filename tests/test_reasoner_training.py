"""Training the --think reasoner: the verifiable rewards on hand-made answers, the SFT data built from labelled
images and the toolkit's evidence (templated, marked so), and SFT and GRPO running a step on a tiny random VLM."""

import json

import pytest
from tiny import tiny_vlm_folder
from typer.testing import CliRunner

from aigi.cli import app
from aigi.reasoner import VLMReasoner
from aigi.reasoner_training import (
    EASY_BUDGET_WORDS,
    REWARD_WEIGHTS,
    reward_brevity,
    reward_correct,
    reward_format,
    rewards,
)

runner = CliRunner()
ANSWER = {"verdict": "generated", "confidence": 0.9, "reasons": ["too smooth"], "evidence_used": ["image"]}
WELL = f"<think>smooth skin; checks out</think><answer>{json.dumps(ANSWER)}</answer>"
BARE = json.dumps(ANSWER)
BROKEN = "<think>hmm</think><answer>{generated}</answer>"


def test_the_verdict_reward_needs_a_parsed_right_answer():
    assert reward_correct(WELL, "generated") == 1.0
    assert reward_correct(WELL, "real") == 0.0
    assert reward_correct(BROKEN, "generated") == 0.0


def test_the_format_reward_wants_think_then_answer():
    assert reward_format(WELL) == 1.0
    assert reward_format(BARE) == 0.5  # parses, but without the form
    assert reward_format(BROKEN) == 0.0
    backwards = f"<answer>{json.dumps(ANSWER)}</answer><think>after the fact</think>"
    assert reward_format(backwards) == 0.5


def test_brevity_rewards_short_reasoning_on_easy_images_only():
    short, long = WELL, f"<think>{'word ' * EASY_BUDGET_WORDS}</think><answer>{json.dumps(ANSWER)}</answer>"
    assert reward_brevity(short, "easy") > 0.9 and reward_brevity(long, "easy") == 0.0
    assert reward_brevity(short, "hard") == reward_brevity(long, "hard") == 0.0
    assert reward_brevity("", "easy") == reward_brevity("<think></think>", "easy") == 0.0  # no pay for nothing


def test_the_trl_reward_functions_read_chat_completions_and_columns():
    correct, well_formed, brevity = rewards()
    chat = [
        [{"role": "assistant", "content": WELL}],
        [{"role": "assistant", "content": [{"type": "text", "text": BROKEN}]}],
    ]
    assert correct(chat, label=["generated", "generated"]) == [1.0, 0.0]
    assert well_formed([WELL, BARE]) == [1.0, 0.5]
    assert brevity([WELL, WELL], difficulty=["easy", "hard"])[1] == 0.0
    assert list(REWARD_WEIGHTS) == ["correct", "format", "brevity"]


@pytest.fixture(scope="module")
def sft_jsonl(tmp_path_factory):
    from conftest import make_labelled_images

    root = tmp_path_factory.mktemp("reason")
    data = make_labelled_images(root / "data")
    out = root / "sft.jsonl"
    res = runner.invoke(app, ["reason", "dataset", "--data", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "templated" in res.output
    return out


def test_the_sft_data_is_marked_templated_and_ends_with_the_label(sft_jsonl):
    rows = [json.loads(line) for line in sft_jsonl.read_text().splitlines()]
    assert rows and all(r["rationale_source"] == "templated" for r in rows)
    assert {r["label"] for r in rows} == {"real", "generated"}
    assert all(r["difficulty"] in ("easy", "hard") for r in rows)
    assert all(
        reward_correct(r["completion"], r["label"]) == 1.0 and reward_format(r["completion"]) == 1.0 for r in rows
    )
    assert all("First impression" in r["prompt"] and "P(generated)" in r["prompt"] for r in rows)


@pytest.mark.parametrize("recipe", ["sft", "grpo"])
def test_a_step_of_each_recipe_on_a_tiny_vlm_saves_a_lora_adapter(recipe, sft_jsonl, tmp_path):
    model = tiny_vlm_folder(tmp_path)
    out = tmp_path / f"{recipe}-out"
    extra = ["--num-generations", "2", "--max-completion-length", "8"] if recipe == "grpo" else []
    args = ["reason", recipe, "--data", str(sft_jsonl), "--model", str(model), "--out", str(out)]
    res = runner.invoke(app, [*args, "--max-steps", "1", "--batch-size", "2", "--lora-r", "2", *extra])
    assert res.exit_code == 0, res.output
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


def test_a_merged_model_loads_as_a_reasoner(sft_jsonl, tmp_path):
    model = tiny_vlm_folder(tmp_path)
    out = tmp_path / "merged"
    args = ["reason", "sft", "--data", str(sft_jsonl), "--model", str(model), "--out", str(out), "--merge"]
    res = runner.invoke(app, [*args, "--max-steps", "1", "--lora-r", "2"])
    assert res.exit_code == 0, res.output
    assert VLMReasoner(str(out), max_new_tokens=4).source == str(out)


def test_grpo_settings_that_split_a_group_are_refused_before_loading(sft_jsonl, tmp_path):
    args = ["reason", "grpo", "--data", str(sft_jsonl), "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*args, "--batch-size", "2", "--num-generations", "4"])
    assert res.exit_code == 2 and "multiple of --num-generations" in res.output


def test_bad_training_data_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\nnot json\n')
    res = runner.invoke(
        app, ["reason", "sft", "--data", str(bad), "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "bad.jsonl:1: missing" in res.output and "Traceback" not in res.output
