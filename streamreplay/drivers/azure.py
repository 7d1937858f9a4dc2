"""Reference drivers for the azure dialect: its real client libraries, each reduced to an `Outcome`.

Both take the server's origin as the Azure endpoint (`origin_of`): the clients add
`/openai/deployments/{deployment}/chat/completions?api-version=...` themselves and send the key in an
`api-key` header.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamreplay.clientid import Client
from streamreplay.outcome import Driver, Outcome, describe, origin_of, read_autogen_stream

#: the deployment the drivers name (Azure routes by it; the body's `model` says the same)
DEPLOYMENT = "gpt-4o-mini"
#: a generally available data-plane version
API_VERSION = "2024-10-21"
#: autogen-ext asks for it whatever the model; these are the capabilities the drivers use (none)
MODEL_INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
              "structured_output": False}


def _azure_openai(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    import openai

    client = openai.AzureOpenAI(azure_endpoint=origin_of(base_url), api_key="not-needed", api_version=API_VERSION,
                                max_retries=0, timeout=timeout)
    out = Outcome("")
    try:
        for chunk in client.chat.completions.create(model=DEPLOYMENT, messages=messages, stream=True):
            if chunk.choices:  # Azure's first chunk (the prompt's filter verdicts) and its usage chunk have none
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        client.close()
    return out


async def azure_openai(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    return await asyncio.to_thread(_azure_openai, base_url, messages, timeout)


async def autogen_azure(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    from autogen_ext.models.openai import AzureOpenAIChatCompletionClient

    client = AzureOpenAIChatCompletionClient(azure_deployment=DEPLOYMENT, model=DEPLOYMENT, api_version=API_VERSION,
                                             azure_endpoint=origin_of(base_url), api_key="not-needed",
                                             max_retries=0, timeout=timeout, model_info=MODEL_INFO)
    return await read_autogen_stream(client, messages)


DRIVERS: dict[Client, Driver] = {Client.AZURE_OPENAI: azure_openai, Client.AUTOGEN_AZURE: autogen_azure}
