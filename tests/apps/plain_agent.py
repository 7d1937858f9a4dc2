"""agent.py's judgements on the standard library alone, for the bisect tests' searches: a search runs
the app once a step, and the openai SDK takes ten times as long to start. It reads the stream as the
SDK does: line by line, stopping at [DONE], failing on a broken body or a read that times out.

    python plain_agent.py needs-finish       exit 0 only if the stream carried finish_reason=stop
    python plain_agent.py needs-words N      exit 0 only if at least N content chunks arrived
    python plain_agent.py timeout S          a read timeout of S seconds; exit 1 if it fires
"""

import http.client
import json
import os
import sys
import urllib.request

mode = sys.argv[1]
timeout = float(sys.argv[2]) if mode == "timeout" else 60.0
body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                   "messages": [{"role": "user", "content": "Tell me a story."}]}).encode()
ask = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", body,
                             {"Content-Type": "application/json"})
words, finish = 0, None
try:
    with urllib.request.urlopen(ask, timeout=timeout) as answer:
        for line in answer:
            if not line.startswith(b"data: "):
                continue
            if line[6:].strip() == b"[DONE]":
                break
            for choice in json.loads(line[6:]).get("choices", []):
                words += bool(choice.get("delta", {}).get("content"))
                finish = choice.get("finish_reason") or finish
except (OSError, ValueError, http.client.HTTPException):
    sys.exit(1)
if mode == "needs-finish":
    sys.exit(0 if finish == "stop" else 1)
if mode == "needs-words":
    sys.exit(0 if words >= int(sys.argv[2]) else 1)
sys.exit(0)
