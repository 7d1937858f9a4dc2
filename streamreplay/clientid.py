"""Which client sent an exchange, in one vocabulary: `Client` (DESIGN.md, "Client identity").

A client's value is its id (`openai-async`): what `repro` prints, what repro.py's `--client` takes,
the name of its repro template. Its `label` (`openai async`) is how `matrix`, `bisect --by client` and
`streamreplay client` name it in tables; `Client.parse` takes either spelling. `recognise_client`
tells the client from a recorded exchange: the User-Agent (or the SDK's X-Stainless headers) says
whether the openai SDK sent it and whether sync or async; the request's shape says which framework
drove the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from streamreplay.store import Exchange

__all__ = [
    "AG2_SYSTEM_MESSAGES",
    "AUTOGEN_SYSTEM",
    "CLIENT_INFO",
    "Client",
    "ClientInfo",
    "client_name",
    "describe_client",
    "recognise_client",
    "request_header",
    "sdk_mode",
]


class Client(str, Enum):
    OPENAI_SYNC = "openai-sync"
    OPENAI_ASYNC = "openai-async"
    AUTOGEN_AGENTCHAT = "autogen-agentchat"
    AG2 = "ag2"
    LANGCHAIN = "langchain"
    HTTP = "http"
    # the other dialects' clients (ClientInfo.dialect says which)
    OPENAI_RESPONSES = "openai-responses"
    OPENAI_RESPONSES_STREAM = "openai-responses-stream"
    LANGCHAIN_RESPONSES = "langchain-responses"
    ANTHROPIC = "anthropic"
    ANTHROPIC_STREAM = "anthropic-stream"
    AUTOGEN_ANTHROPIC = "autogen-anthropic"
    AG2_ANTHROPIC = "ag2-anthropic"
    AZURE_OPENAI = "azure-openai"
    AUTOGEN_AZURE = "autogen-azure"
    OLLAMA = "ollama"
    AUTOGEN_OLLAMA = "autogen-ollama"

    def __str__(self) -> str:
        return self.value

    @property
    def info(self) -> ClientInfo:
        return CLIENT_INFO[self]

    @property
    def label(self) -> str:
        return CLIENT_INFO[self].label

    @classmethod
    def parse(cls, name: str, among: Iterable[Client] | None = None) -> Client:
        """The client `name` means, by id or label ("openai-async" or "openai async"), one of `among`
        (default: any); a ValueError that lists the labels of `among` otherwise."""
        choices = list(cls) if among is None else list(among)
        for client in choices:
            if name in (client.value, client.label):
                return client
        raise ValueError(f"unknown client {name!r}; known: {', '.join(c.label for c in choices)}")


@dataclass(frozen=True)
class ClientInfo:
    label: str  # how tables name it: "openai async"
    script: str  # what repro.py sends through, in its docstring: "openai.AsyncOpenAI"
    library: str | None = None  # the framework on top of the openai SDK, as `diagnose` names it; None: the SDK alone
    asynchronous: bool | None = False  # None: as the recorded SDK client was (langchain has both)
    dialect: str = "chat"  # the API it speaks (streamreplay.dialects)


CLIENT_INFO: dict[Client, ClientInfo] = {
    Client.OPENAI_SYNC: ClientInfo("openai sync", "openai.OpenAI"),
    Client.OPENAI_ASYNC: ClientInfo("openai async", "openai.AsyncOpenAI", asynchronous=True),
    Client.AUTOGEN_AGENTCHAT: ClientInfo("autogen-agentchat", "autogen's OpenAIChatCompletionClient.create_stream",
                                         library="autogen-agentchat", asynchronous=True),
    Client.AG2: ClientInfo("AG2", "AG2 ConversableAgent.generate_reply", library="AG2"),
    Client.LANGCHAIN: ClientInfo("langchain", "langchain-openai ChatOpenAI", library="langchain-openai",
                                 asynchronous=None),
    Client.HTTP: ClientInfo("plain HTTP", "plain HTTP (urllib)"),
    Client.OPENAI_RESPONSES: ClientInfo("openai responses", "openai.OpenAI responses.create(stream=True)",
                                        dialect="responses"),
    Client.OPENAI_RESPONSES_STREAM: ClientInfo("openai responses.stream", "openai.AsyncOpenAI responses.stream()",
                                               asynchronous=True, dialect="responses"),
    Client.LANGCHAIN_RESPONSES: ClientInfo("langchain responses", "langchain-openai ChatOpenAI(use_responses_api=True)",
                                           library="langchain-openai", dialect="responses"),
    Client.ANTHROPIC: ClientInfo("anthropic", "anthropic.Anthropic messages.create(stream=True)", dialect="anthropic"),
    Client.ANTHROPIC_STREAM: ClientInfo("anthropic messages.stream", "anthropic.AsyncAnthropic messages.stream()",
                                        asynchronous=True, dialect="anthropic"),
    Client.AUTOGEN_ANTHROPIC: ClientInfo("autogen Anthropic", "autogen's AnthropicChatCompletionClient.create_stream",
                                         library="autogen-agentchat", asynchronous=True, dialect="anthropic"),
    Client.AG2_ANTHROPIC: ClientInfo("AG2 Anthropic", "AG2 ConversableAgent with api_type anthropic",
                                     library="AG2", dialect="anthropic"),
    Client.AZURE_OPENAI: ClientInfo("AzureOpenAI", "openai.AzureOpenAI", dialect="azure"),
    Client.AUTOGEN_AZURE: ClientInfo("autogen Azure", "autogen's AzureOpenAIChatCompletionClient.create_stream",
                                     library="autogen-agentchat", asynchronous=True, dialect="azure"),
    Client.OLLAMA: ClientInfo("ollama", "ollama.Client chat(stream=True)", dialect="ollama"),
    Client.AUTOGEN_OLLAMA: ClientInfo("autogen Ollama", "autogen's OllamaChatCompletionClient.create_stream",
                                      library="autogen-agentchat", asynchronous=True, dialect="ollama"),
}

AUTOGEN_SYSTEM = ("You are a helpful AI assistant. Solve tasks using your tools. Reply with TERMINATE when the task "
                  "has been completed.")
#: the defaults of AG2's ConversableAgent and AssistantAgent
AG2_SYSTEM_MESSAGES = ("You are a helpful AI Assistant.", "You are a helpful AI assistant.\nSolve tasks using")


def request_header(ex: Exchange, name: str) -> str | None:
    """A recorded request header (`name` in lower case)."""
    return next((v for k, v in ex.request_headers if k.lower() == name), None)


def sdk_mode(ex: Exchange) -> str | None:
    """Whether the openai SDK sent it, and which client: "sync" or "async" (None: not the SDK)."""
    agent = ex.client or request_header(ex, "user-agent") or ""
    if agent.startswith("AsyncOpenAI/"):
        return "async"
    if agent.startswith("OpenAI/"):
        return "sync"
    flag = request_header(ex, "x-stainless-async")  # a custom User-Agent leaves the SDK's other headers
    return None if flag is None else ("sync" if flag == "false" else "async")


def client_name(user_agent: str | None) -> str | None:
    """The openai SDK client a recorded User-Agent names ("openai-python 2.54.0, AsyncOpenAI"), else the
    User-Agent itself."""
    if not user_agent:
        return None
    for prefix, kind in (("AsyncAzureOpenAI/Python", "AsyncAzureOpenAI"), ("AzureOpenAI/Python", "AzureOpenAI"),
                         ("AsyncOpenAI/Python", "AsyncOpenAI"), ("OpenAI/Python", "OpenAI")):
        if user_agent.startswith(prefix):
            version = user_agent[len(prefix):].strip().split(" ")[0]  # "AsyncOpenAI/Python 2.54.0"
            return f"openai-python {version}, {kind}"
    return user_agent


def _content_first(m: dict[str, Any]) -> bool:
    keys = list(m)
    return "content" in keys and "role" in keys and keys.index("content") < keys.index("role")


def _order_kept(ex: Exchange) -> bool:
    """False when the body's key order says nothing: a cassette stores JSON with sorted keys, and an
    imported exchange's body is that JSON written back (`json.dumps` with its default separators)."""
    try:
        return ex.request_body.strip() != json.dumps(json.loads(ex.request_body), sort_keys=True).encode()
    except ValueError:
        return True


def _ag2(body: dict[str, Any], messages: list[dict[str, Any]], ordered: bool, all_content_first: bool) -> bool:
    """AG2 sends its agent's system message first, written content-first, and asks for usage in a stream."""
    if not messages or messages[0].get("role") != "system":
        return False
    if str(messages[0].get("content")).startswith(AG2_SYSTEM_MESSAGES):
        return True
    if ordered and (not _content_first(messages[0])
                    or (all_content_first and not any("name" in m for m in messages))):  # the latter: langchain
        return False
    return bool(body.get("stream")) and (body.get("stream_options") or {}).get("include_usage") is True


def recognise_client(exchange: Exchange) -> Client:
    """The kind of client that sent an exchange.

    All but plain HTTP use the openai SDK, whose User-Agent (or X-Stainless-Async) says sync or async;
    the rest is told from the request's shape: autogen-agentchat names every user message after its
    source (or sends its default system message); AG2 puts its agent's system message first, written
    content-first, and asks for usage in a stream; langchain-openai writes every message content-first.
    Key order is only used while the body keeps it (not after a cassette import).
    """
    if exchange.dialect.name != "chat":
        return _dialect_client(exchange)
    kind = sdk_mode(exchange)
    if kind is None:
        return Client.HTTP
    body = exchange.request_json()
    body = body if isinstance(body, dict) else {}
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    if kind == "async" and ((users and all("name" in m for m in users))
                            or (messages and messages[0].get("content") == AUTOGEN_SYSTEM)):
        return Client.AUTOGEN_AGENTCHAT
    ordered = _order_kept(exchange)
    all_content_first = ordered and bool(messages) and all(_content_first(m) for m in messages)
    if kind == "sync" and _ag2(body, messages, ordered, all_content_first):
        return Client.AG2
    if all_content_first:
        return Client.LANGCHAIN
    return Client.OPENAI_ASYNC if kind == "async" else Client.OPENAI_SYNC


def _dialect_client(exchange: Exchange) -> Client:
    """The client of an exchange in another dialect than chat, from its User-Agent; the plain SDK when
    nothing tells a framework on top of it apart."""
    agent = exchange.client or request_header(exchange, "user-agent") or ""
    dialect = exchange.dialect.name
    asynchronous = agent.startswith("Async") or request_header(exchange, "x-stainless-async") not in (None, "false")
    if dialect == "anthropic":
        if agent.startswith("ag2/"):  # "ag2/0.14.0 Anthropic/Python 0.125.0"
            return Client.AG2_ANTHROPIC
        if request_header(exchange, "x-stainless-helper-method") == "stream":
            return Client.ANTHROPIC_STREAM
        body = exchange.request_json()
        if asynchronous and isinstance(body, dict) and "temperature" in body:  # autogen-ext always sends it
            return Client.AUTOGEN_ANTHROPIC
        return Client.ANTHROPIC_STREAM if asynchronous else Client.ANTHROPIC
    if dialect == "responses":
        body = exchange.request_json()
        given = body.get("input") if isinstance(body, dict) else None
        items = [m for m in given if isinstance(m, dict)] if isinstance(given, list) else []
        if items and all(m.get("type") == "message" and _content_first(m) for m in items):
            return Client.LANGCHAIN_RESPONSES  # langchain-openai types its input items, content first
        return Client.OPENAI_RESPONSES_STREAM if asynchronous else Client.OPENAI_RESPONSES
    if dialect == "azure":
        if agent.startswith("autogen-python/"):  # autogen-ext replaces the SDK's User-Agent with its own
            return Client.AUTOGEN_AZURE
        sdk = agent.startswith(("AzureOpenAI/", "AsyncAzureOpenAI/")) or any(
            k.lower().startswith("x-stainless-") for k, _ in exchange.request_headers)
        return Client.AZURE_OPENAI if sdk else Client.HTTP
    if dialect == "ollama":
        return Client.OLLAMA
    return Client.HTTP


def describe_client(exchange: Exchange) -> str:
    """For `diagnose`: "autogen-agentchat on openai-python 2.54.0, AsyncOpenAI"."""
    client = recognise_client(exchange)
    if client is Client.HTTP:
        return f"plain HTTP ({exchange.client or 'no User-Agent'})"
    sdk = client_name(exchange.client) or f"openai-python, {sdk_mode(exchange)}"
    return f"{client.info.library} on {sdk}" if client.info.library else sdk
