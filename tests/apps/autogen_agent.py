"""An AutoGen agent configured only by the environment (OPENAI_BASE_URL, OPENAI_API_KEY): one streamed turn."""

import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.openai import OpenAIChatCompletionClient

INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
        "structured_output": False}


async def main() -> None:
    client = OpenAIChatCompletionClient(model="gpt-4o-mini", model_info=INFO, max_retries=0)
    agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
    result = await agent.run(task="Say hello")
    print(f"agent: {result.messages[-1].content!r}")
    await client.close()


asyncio.run(main())
