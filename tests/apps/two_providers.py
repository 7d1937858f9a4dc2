"""An app that talks to two providers and is configured only by the environment, as apps are:
the openai SDK reads OPENAI_BASE_URL, the anthropic SDK ANTHROPIC_BASE_URL.

    python two_providers.py            an answer from each, printed
    python two_providers.py openai     the openai answer only
    python two_providers.py break N    leave the openai stream after N chunks, then exit 3
"""

import sys

import anthropic
import openai

mode = sys.argv[1] if len(sys.argv) > 1 else "both"
question = [{"role": "user", "content": "Say hello"}]
chat = openai.OpenAI(max_retries=0, timeout=10)
stream = chat.chat.completions.create(model="gpt-4o-mini", stream=True, messages=question)
text = ""
for n, chunk in enumerate(stream, 1):
    text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    if mode == "break" and n == int(sys.argv[2]):
        stream.close()
        print(f"openai: left after {n} chunks: {text!r}")
        sys.exit(3)
print(f"openai: {text!r}")
if mode == "both":
    claude = anthropic.Anthropic(max_retries=0, timeout=10)
    with claude.messages.stream(model="claude-test", max_tokens=64, messages=question) as answer:
        print(f"anthropic: {''.join(answer.text_stream)!r}")
