"""Azure OpenAI chat.completions (`/openai/deployments/{name}/chat/completions?api-version=...`): the
chat format, with a first chunk that has no choices and carries `prompt_filter_results`."""

from __future__ import annotations

import re

from streamreplay.dialects.chat import Chat

_DEPLOYMENT = re.compile(r"/deployments/[^/]+/(?:chat/)?completions$")


class Azure(Chat):
    name = "azure"
    label = "Azure OpenAI chat.completions"

    def recognises(self, path: str) -> bool:
        return _DEPLOYMENT.search(path.rstrip("/")) is not None
