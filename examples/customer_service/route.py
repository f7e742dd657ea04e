"""Route customer messages through one ``adaptune serve`` process: intent -> reply, or a hand-off to a person.

    .venv/bin/python examples/customer_service/route.py "my card still hasn't arrived" "can you book me a flight"
    .venv/bin/python examples/customer_service/route.py - < messages.txt          # one message per line

For each message: ``POST /v1/classify`` on the intent adapter (``--classifier``, BANKING77); when its confidence is
below the threshold that ``evaluate.py router`` chose (``runs/customer_service/router.json``, or ``--threshold``),
the message is out of scope and handed off; otherwise ``POST /v1/chat/completions`` on the reply adapter
(``--replier``, SmolLM2) with the same system turn the reply adapter was trained with (the intent named) writes the
answer, greedily. One JSON line per message: ``message``, ``intent``, ``confidence``, ``action`` (``reply`` or
``handoff``) and ``reply``. Standard library only: the router is a client and needs no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prepare_data import SYSTEM  # noqa: E402

HANDOFF = "I'm passing you to a colleague who can help with this."


class Client:
    def __init__(self, server: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        self.server, self.timeout = server.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.server + route, data=json.dumps(body).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            raise SystemExit(f"{self.server}{route}: HTTP {err.code}: {detail}") from None


def route(client: Client, messages: list[str], classifier: str, replier: str, threshold: float) -> list[dict]:
    intents = client.post("/v1/classify", {"adapter": classifier, "inputs": messages})["predictions"]
    answers = []
    for message, intent in zip(messages, intents, strict=True):
        answer = {"message": message, "intent": intent["label"], "confidence": round(intent["score"], 4)}
        if intent["score"] < threshold:
            answers.append({**answer, "action": "handoff", "reply": HANDOFF})
            continue
        turns = [
            {"role": "system", "content": SYSTEM.format(intent=intent["label"].replace("_", " "))},
            {"role": "user", "content": message},
        ]
        body = {"model": replier, "messages": turns, "max_tokens": 64, "temperature": 0}
        reply = client.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
        answers.append({**answer, "action": "reply", "reply": reply.strip()})
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", nargs="+", help="Messages, or - to read one per line from standard input.")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--classifier", default="banking77-intents")
    parser.add_argument("--replier", default="replies")
    parser.add_argument("--threshold", type=float, default=None, help="Default: the one in --router-file.")
    parser.add_argument(
        "--router-file", type=Path, default=HERE.parents[1] / "runs" / "customer_service" / "router.json"
    )
    args = parser.parse_args(argv)
    messages = [line.strip() for line in sys.stdin if line.strip()] if args.messages == ["-"] else args.messages
    threshold = args.threshold
    if threshold is None:
        chosen = args.router_file
        if not chosen.is_file():
            raise SystemExit(f"{chosen}: missing; run evaluate.py router first, or pass --threshold")
        threshold = float(json.loads(chosen.read_text(encoding="utf-8"))["threshold"])
    client = Client(args.server, args.api_key)
    for answer in route(client, messages, args.classifier, args.replier, threshold):
        print(json.dumps(answer, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
