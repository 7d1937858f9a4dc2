"""A tiny app for bisect tests: reads one streamed answer from OPENAI_BASE_URL and judges it.

    python agent.py needs-finish       exit 0 only if the stream carried finish_reason=stop
    python agent.py needs-words N      exit 0 only if at least N content chunks arrived
    python agent.py timeout S          a client with a read timeout of S seconds; exit 1 if it fires
"""

import sys

import openai

mode = sys.argv[1]
timeout = float(sys.argv[2]) if mode == "timeout" else 60.0
client = openai.OpenAI(max_retries=0, timeout=timeout)
words, finish = 0, None
try:
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "Tell me a story."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            words += 1
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
except openai.APIError:
    sys.exit(1)
except Exception:
    sys.exit(1)
if mode == "needs-finish":
    sys.exit(0 if finish == "stop" else 1)
if mode == "needs-words":
    sys.exit(0 if words >= int(sys.argv[2]) else 1)
sys.exit(0)
