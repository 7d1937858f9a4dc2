import openai
import pytest

PROMPT = [{"role": "user", "content": "Name three colors of the rainbow."}]


def ask(base_url: str) -> tuple[str, str | None]:
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    stream = client.chat.completions.create(model="smollm2", messages=PROMPT, temperature=0,
                                            max_tokens=60, stream=True)
    text, finish = "", None
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.mark.streamreplay("openai-happy-path")  # recordings/openai-happy-path.jsonl
def test_the_answer_arrives_whole(streamreplay):
    text, finish = ask(streamreplay.base_url)
    assert finish == "stop" and text.startswith("The rainbow")
    streamreplay.assert_all_used()


@pytest.mark.streamreplay("openai-happy-path", fault="cut:chunk=5")
def test_a_silent_cutoff_is_caught(streamreplay):
    text, finish = ask(streamreplay.base_url)
    # the SDK raises nothing when a stream ends early and cleanly: only finish_reason tells
    assert finish is None and text == "The rainbow consists of"
