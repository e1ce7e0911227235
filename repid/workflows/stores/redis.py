"""Workflow state in Redis: one hash per workflow, one set per join; first-wins step writes and
join arrivals are Lua scripts, so two workers finishing parents at once cannot both fire."""

from __future__ import annotations

from typing import Any

from repid.workflows.stores.base import RUNNING_PREFIX, StoredWorkflow

__all__ = ["RedisStore"]

# KEYS[1] the workflow hash; ARGV: step, state, terminal (0/1)
_SET_STEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[1]) == 1 then return 0 end
if ARGV[4] == '1' then
  local current = redis.call('HGET', KEYS[1], 's:' .. ARGV[1])
  if current and string.sub(current, 1, string.len(ARGV[5])) == ARGV[5] then return 0 end
end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 't:' .. ARGV[1], '1') end
redis.call('HSET', KEYS[1], 's:' .. ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] the join set, KEYS[2] the workflow hash; ARGV: parent
_ARRIVE = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return {added, redis.call('SCARD', KEYS[1])}
"""
_SET_STATUS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Keys under the bucket broker's prefix: `wf:<id>` (hash), `wf:<id>:j:<step>` (sets),
    `wf:index` (a sorted set of ids by creation time)."""

    def __init__(self, broker: Any) -> None:
        self.link = broker.link
        self.prefix: str = broker.prefix

    def _key(self, wf_id: str) -> str:
        return f"{self.prefix}wf:{wf_id}"

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        import time

        key = self._key(wf_id)
        await self.link.call("HSET", key, "doc", doc, "status", "running")
        await self.link.call("PEXPIRE", key, max(1, int(ttl * 1000)))
        index = f"{self.prefix}wf:index"
        now = time.time()
        await self.link.call("ZADD", index, now, wf_id)
        await self.link.call("ZREMRANGEBYSCORE", index, "-inf", now - ttl)

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        raw = await self.link.call("HGETALL", self._key(wf_id))
        if not raw:
            return None
        if isinstance(raw, dict):
            pairs = [(_text(k), _text(v)) for k, v in raw.items()]
        else:
            items = [_text(x) for x in raw]
            pairs = list(zip(items[::2], items[1::2], strict=True))
        wf = StoredWorkflow("")
        for name, value in pairs:
            if name == "doc":
                wf.doc = value
            elif name == "status":
                wf.status = value
            elif name.startswith("s:"):
                wf.steps[name[2:]] = value
            elif name.startswith("g:"):
                wf.signals[name[2:]] = value
        return wf if wf.doc else None

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        done = await self.link.call(
            "EVAL",
            _SET_STEP,
            1,
            self._key(wf_id),
            step,
            state,
            "1" if terminal else "0",
            "1" if unless_running else "0",
            RUNNING_PREFIX,
        )
        return bool(int(done))

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        key = self._key(wf_id)
        added, count = await self.link.call("EVAL", _ARRIVE, 2, f"{key}:j:{child}", key, parent)
        return bool(int(added)), int(count)

    async def set_status(self, wf_id: str, status: str) -> bool:
        done = await self.link.call("EVAL", _SET_STATUS, 1, self._key(wf_id), status)
        return bool(int(done))

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        await self.link.call("HSET", self._key(wf_id), f"g:{name}", data)

    async def list_ids(self, limit: int) -> list[str]:
        raw = await self.link.call("ZREVRANGE", f"{self.prefix}wf:index", 0, max(0, limit - 1))
        return [_text(x) for x in raw or []]
