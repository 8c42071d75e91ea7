"""Append an entry to a Redis stream at most once per source message.

Delivery from a consumer group is at-least-once: a consumer killed after it
wrote a verdict but before its XACK leaves the message pending, and whoever
claims it judges it again. So every append goes with a dedupe key naming the
source message, and the check, the XADD and the key are one Lua script: Redis
runs a script without interleaving any other client's command, so two
consumers racing on one message cannot both append. The key expires after
``--dedupe-ttl-s``; it only has to outlive the time a message can stay pending.

A script that fails half-way keeps the appends it made (Redis scripts do not
roll back), but each of those set its key in the same step, so the retry skips
them: the write stays idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# KEYS: stream_1, dedupe_key_1, stream_2, dedupe_key_2, ...
# ARGV: ttl_s, then for each entry: maxlen (0: no trimming), 2 x field count, field, value, ...
# Returns, per entry, {1, new_entry_id} or {0, "<stream> <entry id>"} of the earlier append.
APPEND_ONCE_LUA = """
local ttl = ARGV[1]
local result = {}
local a = 2
for i = 1, #KEYS, 2 do
  local stream, key = KEYS[i], KEYS[i + 1]
  local maxlen = tonumber(ARGV[a])
  local n = tonumber(ARGV[a + 1])
  local seen = redis.call('GET', key)
  if seen then
    result[#result + 1] = {0, seen}
  else
    local args = {stream}
    if maxlen > 0 then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = 1, n do
      args[#args + 1] = ARGV[a + 1 + j]
    end
    local id = redis.call('XADD', unpack(args))
    redis.call('SET', key, stream .. ' ' .. id, 'EX', ttl)
    result[#result + 1] = {1, id}
  end
  a = a + 2 + n
end
return result
"""

# Lua 5.1's unpack() takes at most about 8,000 values (LUAI_MAXCSTACK); stay well below it per entry.
MAX_FIELDS_PER_ENTRY = 2_000


@dataclass(frozen=True, slots=True)
class Append:
    stream: str
    dedupe_key: str
    fields: Mapping[str | bytes, str | bytes | int | float]
    maxlen: int | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    new: bool
    stream: str
    entry_id: str


def dedupe_key(source_stream: str, group: str, source_id: str) -> str:
    """One key per source message and consumer group, for verdicts and dead letters alike.

    Sharing the key means a message that one consumer dead-letters (after too
    many attempts) and another judges ends in exactly one of the two streams,
    when both live on one Redis server.
    """
    return f"{source_stream}:done:{group}:{source_id}"


class AppendOnce:
    """The script bound to one Redis client; ``append`` runs it over a batch in one round trip."""

    def __init__(self, client: Any, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.script = client.register_script(APPEND_ONCE_LUA)

    def append(self, entries: Sequence[Append]) -> list[AppendResult]:
        if not entries:
            return []
        keys: list[str] = []
        args: list[Any] = [self.ttl_s]
        for e in entries:
            keys += [e.stream, e.dedupe_key]
            flat: list[Any] = []
            for k, v in e.fields.items():
                flat += [k, v]
            args += [e.maxlen or 0, len(flat), *flat]
        raw = self.script(keys=keys, args=args)
        out = []
        for e, (flag, value) in zip(entries, raw, strict=True):
            text = value.decode() if isinstance(value, bytes) else str(value)
            if int(flag) == 1:
                out.append(AppendResult(True, e.stream, text))
            else:
                stream, _, entry_id = text.rpartition(" ")
                out.append(AppendResult(False, stream, entry_id))
        return out
