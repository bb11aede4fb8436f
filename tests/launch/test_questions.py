"""The supervisor's question port: tokens, sharing one question, garbage."""

from __future__ import annotations

import asyncio
import json

from chorus.launch.questions import QuestionServer
from chorus.where import WhereAnswers


async def _ask(address: str, line: bytes) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(line)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return json.loads(answer) if answer else {}


def test_questions_need_the_token_and_share_one_answer() -> None:
    asked = 0

    async def where() -> WhereAnswers:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.3)  # the ranks take a while to answer
        return WhereAnswers(size=2, snapshots=[], missing={"0": "no answer", "1": "no answer"})

    async def main() -> None:
        server = QuestionServer("secret", where)
        address = await server.start()
        assert address.startswith("127.0.0.1:")
        try:
            good = json.dumps({"token": "secret", "rank": 0, "question": "where"}).encode() + b"\n"
            answers = await asyncio.gather(*(_ask(address, good) for _ in range(4)))
            # Four ranks asking at once: the ranks were asked once.
            assert asked == 1
            for answer in answers:
                assert answer["ok"] is True, answer
                assert answer["answers"]["missing"] == {"0": "no answer", "1": "no answer"}  # type: ignore[index]
            await _ask(address, good)
            assert asked == 2  # a later question asks again
            wrong = json.dumps({"token": "guess", "rank": 0, "question": "where"}).encode()
            refused = await _ask(address, wrong + b"\n")
            assert refused == {"ok": False, "error": "wrong token (not a rank of this job)"}
            other = json.dumps({"token": "secret", "rank": 0, "question": "why"}).encode()
            assert (await _ask(address, other + b"\n"))["error"] == "unknown question 'why'"
            assert (await _ask(address, b"{not json\n"))["error"] == "not a question"
            # A line longer than any question: dropped, and the server still answers.
            assert await _ask(address, b"x" * 100_000 + b"\n") == {}
            assert (await _ask(address, good))["ok"] is True
            assert asked == 3
        finally:
            server.close()

    asyncio.run(main())
