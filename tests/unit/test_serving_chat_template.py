"""The chat template stored with a model (serving/chat_template.py): read from chat_template.json beside the
checkpoints, the built-in tokenizer's default when there is none, and a broken one refused at load time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moeops.serving.chat_template import CHAT_TEMPLATE_FILE, ROLE_LINES, ChatTemplate
from moeops.serving.decoding.early_exit import NEVER_EXIT
from moeops.serving.loader import CheckpointRef, ModelLoadError, load_served
from moeops.serving.openai.chat_models import ChatCompletionRequest
from moeops.serving.openai.errors import ClientError
from moeops.serving.openai.plans import plan_chat
from serving_server import write_run

MESSAGES = [{"role": "system", "content": "sum"}, {"role": "user", "content": [{"type": "text", "text": "1+1="}]}]
CONVERSATION: dict[str, object] = {"model": "tiny", "messages": MESSAGES}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    write_run(run_dir)
    return run_dir / "checkpoints"


def prompt_of(checkpoints: Path, body: dict[str, object]) -> list[int]:
    served = load_served(CheckpointRef.resolve(checkpoints), "tiny")
    return plan_chat(ChatCompletionRequest.model_validate(body), served, NEVER_EXIT).prompt


def test_the_built_in_tokenizers_default_is_the_messages_text(checkpoints: Path) -> None:
    served = load_served(CheckpointRef.resolve(checkpoints), "tiny")
    assert prompt_of(checkpoints, CONVERSATION) == served.codec.encode_prompt("sum1+1=")


def test_a_template_stored_with_the_model(checkpoints: Path) -> None:
    (checkpoints / CHAT_TEMPLATE_FILE).write_text(json.dumps({"message": "({content});", "generation_prompt": ">"}))
    try:
        served = load_served(CheckpointRef.resolve(checkpoints), "tiny")
        assert served.chat_template == ChatTemplate("({content});", ">")
        assert prompt_of(checkpoints, CONVERSATION) == served.codec.encode_prompt("(sum);(1+1=);>")
        with pytest.raises(ClientError) as caught:  # "{role}" gives letters the alphabet has, but not "_"
            prompt_of(checkpoints, {**CONVERSATION, "messages": [{"role": "user", "content": "a_b"}]})
        assert caught.value.param == "messages"
    finally:
        (checkpoints / CHAT_TEMPLATE_FILE).unlink()


@pytest.mark.parametrize("text", ['{"message": "no content field"}', "[1]", "{", '{"message": "{content}", "x": 1}'])
def test_a_broken_template_is_refused_at_load(checkpoints: Path, text: str) -> None:
    (checkpoints / CHAT_TEMPLATE_FILE).write_text(text)
    try:
        with pytest.raises(ModelLoadError, match=CHAT_TEMPLATE_FILE):
            load_served(CheckpointRef.resolve(checkpoints), "tiny")
    finally:
        (checkpoints / CHAT_TEMPLATE_FILE).unlink()


def test_role_lines_keep_braces_in_content_as_text() -> None:
    rendered = ROLE_LINES.render([("user", "{role} {content}")])
    assert rendered == "user: {role} {content}\nassistant: "
