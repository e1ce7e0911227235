-- The Redis broker's Lua scripts. Each `-- @script NAME` section is one script; the `prelude`
-- section is prepended to every other one. Every multi-key change of a queue happens in one of
-- these scripts, so it is atomic.
--
-- KEYS of a queue (always in this order):
--   1..3  streams of priority HIGH, MEDIUM, LOW (consumer group 'repid')
--   4..6  lists of returned (rejected) entry ids per priority, served before new entries
--   7     zset of delayed messages (score: due epoch ms, member: token "<p><seq>:<job id>")
--   8     hash token -> envelope of the delayed messages
--   9     stream of dead letters
--   10    hash job id -> location ("<p><entry id>" in a stream or "d<token>" delayed)
--   11    hash of queue metadata (exists while the queue is declared; 'seq' counter)
--   12    set of job ids with a cancellation request (their flags: '<prefix>cancel:<id>', read
--         and deleted by the client: a script touches only keys passed in KEYS, so it runs on a
--         Redis Cluster, where all keys of a queue share the `{queue}` hash tag and slot)
--   13    zset consumer name -> its last heartbeat (server time, ms): a consumer silent for
--         longer than the dead-consumer window is dead, and `fetch` claims what it held at once
-- A delivery is identified by (priority, entry id, consumer, delivery count): settlements check
-- the pending entry still has that owner and count, so a reclaimed copy is never touched by
-- the holder of an expired lease. A script marked `bare` gets no prelude.

-- @script prelude
local G = 'repid'
local RETURNED = '~returned'

local function place(jid, env, p, due, now)
  if due ~= '' and tonumber(due) > tonumber(now) then
    local token = p .. redis.call('HINCRBY', KEYS[11], 'seq', 1) .. ':' .. jid
    redis.call('ZADD', KEYS[7], due, token)
    redis.call('HSET', KEYS[8], token, env)
    redis.call('HSET', KEYS[10], jid, 'd' .. token)
  else
    local id = redis.call('XADD', KEYS[p + 1], '*', 'm', env, 'j', jid)
    redis.call('HSET', KEYS[10], jid, p .. id)
  end
end

local function forget(jid, loc)
  if jid ~= '' and redis.call('HGET', KEYS[10], jid) == loc then
    redis.call('HDEL', KEYS[10], jid)
  end
end

-- A finished job's cancellation request is dropped (its id may be used again later): 2 when
-- it had one (the client then deletes the flag key, which is outside the queue's slot), else 1.
local function clear_cancel(jid)
  if redis.call('SREM', KEYS[12], jid) == 1 then return 2 end
  return 1
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function owned(p, id, consumer, count)
  local pe = redis.call('XPENDING', KEYS[p + 1], G, id, id, 1)[1]
  return pe ~= nil and pe[2] == consumer and pe[4] == tonumber(count)
end

local function release(p, id)
  redis.call('XACK', KEYS[p + 1], G, id)
  redis.call('XDEL', KEYS[p + 1], id)
end

-- The envelope is the `m` field; an entry without one (written by another program) yields ''
-- and is dead-lettered as undecodable, whichever read path fetched it.
local function entry_env(fields)
  if not fields then return '' end
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then return fields[i + 1] or '' end
  end
  return ''
end

local function token_parts(token)
  local colon = string.find(token, ':', 1, true)
  return tonumber(string.sub(token, 1, 1)), string.sub(token, colon + 1)
end

-- @script enqueue
-- ARGV: job id, envelope, priority, due ms ('' = now), now ms, unique check ('1'/'0')
if redis.call('EXISTS', KEYS[11]) == 0 then return -1 end
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[10], ARGV[1]) == 1 then return 0 end
place(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])
return 1

-- @script enqueue_now bare
-- The common case of `enqueue`, without the prelude (a third of its server time) and with only
-- the keys it touches. KEYS: the priority's stream, the id index, the queue metadata.
-- ARGV: job id, envelope, priority, unique check ('1'/'0').
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[2], 'j', ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. id)
return 1

-- @script fetch
-- ARGV: consumer, max count, now ms, sweep ('1': promote due delayed, claim the entries of dead
--       consumers, reclaim expired leases), lease ms, dead-consumer window ms.
--       Returns the next due ms (or -1), 1 if dead consumers still hold entries (sweep again at
--       once) else 0, then a flat array of (priority, entry id, envelope, delivery count,
--       redelivered) per delivery, HIGH first.
local me, n, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {-1, 0}
local got = 0
local dead = {}
if ARGV[4] == '1' then
  -- Consumers whose heartbeat stopped (a SIGKILLed worker): their entries are claimed now,
  -- not when each lease expires. A consumer is forgotten once it holds nothing.
  dead = redis.call('ZRANGEBYSCORE', KEYS[13], '-inf', server_ms() - tonumber(ARGV[6]),
    'LIMIT', 0, 16)
end
if ARGV[4] == '1' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 1000)
  for _, token in ipairs(due) do
    local env = redis.call('HGET', KEYS[8], token)
    redis.call('ZREM', KEYS[7], token)
    redis.call('HDEL', KEYS[8], token)
    if env then
      local p, jid = token_parts(token)
      local id = redis.call('XADD', KEYS[p + 1], '*', 'm', env, 'j', jid)
      if redis.call('HGET', KEYS[10], jid) == 'd' .. token then
        redis.call('HSET', KEYS[10], jid, p .. id)
      end
    end
  end
end
local head = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
if head[2] then out[1] = head[2] end
for p = 0, 2 do
  if got >= n then break end
  local s = KEYS[p + 1]
  for _, c in ipairs(dead) do
    if got >= n then break end
    if c ~= me then
      local held = redis.call('XPENDING', s, G, '-', '+', n - got, c)
      for _, pe in ipairs(held) do
        local e = redis.call('XCLAIM', s, G, me, 0, pe[1])[1]
        if e and e[2] then
          out[#out + 1] = p
          out[#out + 1] = e[1]
          out[#out + 1] = entry_env(e[2])
          out[#out + 1] = pe[4] + 1
          out[#out + 1] = 1
          got = got + 1
        end
      end
    end
  end
  if ARGV[4] == '1' and got < n then
    local claimed = redis.call('XAUTOCLAIM', s, G, me, ARGV[5], '0-0', 'COUNT', n - got)
    for _, e in ipairs(claimed[2]) do
      local pe = redis.call('XPENDING', s, G, e[1], e[1], 1)[1]
      out[#out + 1] = p
      out[#out + 1] = e[1]
      out[#out + 1] = entry_env(e[2])
      out[#out + 1] = pe[4]
      out[#out + 1] = 1
      got = got + 1
    end
  end
  while got < n do
    local id = redis.call('LPOP', KEYS[p + 4])
    if not id then break end
    local pe = redis.call('XPENDING', s, G, id, id, 1)[1]
    if pe ~= nil and pe[2] == RETURNED then
      local e = redis.call('XCLAIM', s, G, me, 0, id)[1]
      if e then
        out[#out + 1] = p
        out[#out + 1] = id
        out[#out + 1] = entry_env(e[2])
        out[#out + 1] = pe[4] + 1
        out[#out + 1] = 0
        got = got + 1
      end
    end
  end
  if got < n then
    local r = redis.call('XREADGROUP', 'GROUP', G, me, 'COUNT', n - got, 'STREAMS', s, '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        out[#out + 1] = p
        out[#out + 1] = e[1]
        out[#out + 1] = entry_env(e[2])
        out[#out + 1] = 1
        out[#out + 1] = 0
        got = got + 1
      end
    end
  end
end
for _, c in ipairs(dead) do
  local holds = false
  for p = 0, 2 do
    if #redis.call('XPENDING', KEYS[p + 1], G, '-', '+', 1, c) > 0 then holds = true end
  end
  if holds then
    out[2] = 1
  else
    redis.call('ZREM', KEYS[13], c)
    for p = 0, 2 do redis.pcall('XGROUP', 'DELCONSUMER', KEYS[p + 1], G, c) end
  end
end
return out

-- @script beat
-- KEYS[1]: the queue's heartbeat zset. ARGV: names of this process's live consumers.
local now = server_ms()
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
return #ARGV

-- @script ack
-- ARGV: groups of (priority, entry id, consumer, delivery count, job id). Returns per group
-- 1 (acked), 2 (acked, and the job had a cancellation request) or 0 (stale).
local out = {}
local cancels = redis.call('EXISTS', KEYS[12]) == 1
for i = 1, #ARGV, 5 do
  local p = tonumber(ARGV[i])
  local id = ARGV[i + 1]
  if owned(p, id, ARGV[i + 2], ARGV[i + 3]) then
    release(p, id)
    forget(ARGV[i + 4], p .. id)
    if cancels then out[#out + 1] = clear_cancel(ARGV[i + 4]) else out[#out + 1] = 1 end
  else
    out[#out + 1] = 0
  end
end
return out

-- @script renew
-- ARGV: groups of (priority, entry id, consumer, delivery count). Resets the idle time.
local renewed = 0
for i = 1, #ARGV, 4 do
  local p = tonumber(ARGV[i])
  if owned(p, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) then
    redis.call('XCLAIM', KEYS[p + 1], G, ARGV[i + 2], 0, ARGV[i + 1], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed

-- @script settle
-- ARGV: op ('nack'|'reject'|'requeue'), priority, entry id, consumer, delivery count, job id,
--       new envelope ('' = unchanged), due ms, now ms, raw bytes of an undecodable message ('').
-- Returns 1 (2: a dead-lettered job had a cancellation request), or 0 for a stale delivery.
local op, p, id, jid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[6]
if not owned(p, id, ARGV[4], ARGV[5]) then return 0 end
if op == 'reject' then
  redis.call('XCLAIM', KEYS[p + 1], G, RETURNED, 0, id, 'JUSTID')
  redis.call('LPUSH', KEYS[p + 4], id)
  return 1
end
local env = ARGV[7]
if env == '' then
  env = entry_env(redis.call('XRANGE', KEYS[p + 1], id, id)[1][2])
end
release(p, id)
if op == 'nack' then
  forget(jid, p .. id)
  if ARGV[10] ~= '' then
    redis.call('XADD', KEYS[9], '*', 'm', env, 'j', jid, 'raw', ARGV[10])
  else
    redis.call('XADD', KEYS[9], '*', 'm', env, 'j', jid)
  end
  return clear_cancel(jid)
else
  place(jid, env, p, ARGV[8], ARGV[9])
end
return 1

-- @script browsed
-- Settles a browsed dead letter or delayed message.
-- ARGV: category ('dead'|'delayed'), handle (dead entry id | delayed token), op
--       ('ack'|'nack'|'requeue'), job id, new envelope, due ms, now ms, priority.
local category, handle, op, jid, env = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if category == 'dead' then
  if redis.call('XDEL', KEYS[9], handle) == 0 then return 0 end
  if op == 'requeue' then
    place(jid, env, tonumber(ARGV[8]), ARGV[6], ARGV[7])
  end
  return 1
end
if redis.call('ZREM', KEYS[7], handle) == 0 then return 0 end
local old = redis.call('HGET', KEYS[8], handle)
redis.call('HDEL', KEYS[8], handle)
local p = token_parts(handle)
if op == 'ack' then
  forget(jid, 'd' .. handle)
elseif op == 'nack' then
  forget(jid, 'd' .. handle)
  if env == '' then env = old end
  redis.call('XADD', KEYS[9], '*', 'm', env, 'j', jid)
else
  if env == '' then env = old end
  place(jid, env, p, ARGV[6], ARGV[7])
end
return 1

-- @script cancel
-- ARGV: job id, flag ttl seconds. Returns 'dequeued', 'requested' (the client then sets the
-- job's flag key) or nil.
local jid = ARGV[1]
local loc = redis.call('HGET', KEYS[10], jid)
if not loc then return nil end
if string.sub(loc, 1, 1) == 'd' then
  local token = string.sub(loc, 2)
  redis.call('ZREM', KEYS[7], token)
  redis.call('HDEL', KEYS[8], token)
  redis.call('HDEL', KEYS[10], jid)
  return 'dequeued'
end
local p = tonumber(string.sub(loc, 1, 1))
local id = string.sub(loc, 2)
local pe = redis.call('XPENDING', KEYS[p + 1], G, id, id, 1)[1]
if pe ~= nil and pe[2] ~= RETURNED then
  redis.call('SADD', KEYS[12], jid)
  redis.call('EXPIRE', KEYS[12], ARGV[2])
  return 'requested'
end
if pe ~= nil then redis.call('XACK', KEYS[p + 1], G, id) end
local removed = redis.call('XDEL', KEYS[p + 1], id)
redis.call('HDEL', KEYS[10], jid)
if removed == 0 then return nil end
return 'dequeued'

-- @script declare
-- ARGV: now ms. (The registry of queue names, in another slot, is written by the client.)
if redis.call('EXISTS', KEYS[11]) == 0 then
  redis.call('HSET', KEYS[11], 'created', ARGV[1])
end
for p = 0, 2 do
  redis.pcall('XGROUP', 'CREATE', KEYS[p + 1], G, '0', 'MKSTREAM')
end
return 1

-- @script flush
-- ARGV: '1' to delete the queue too, else '0'. (The client updates the registry of names.)
for i = 1, 10 do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[12], KEYS[13])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[11])
  return 1
end
for p = 0, 2 do
  redis.pcall('XGROUP', 'CREATE', KEYS[p + 1], G, '0', 'MKSTREAM')
end
return 1

-- @script counts
-- Returns ready, delayed, in flight, dead.
if redis.call('EXISTS', KEYS[11]) == 0 then return -1 end
local ready, inflight = 0, 0
for p = 0, 2 do
  local length = redis.call('XLEN', KEYS[p + 1])
  local pending = redis.call('XPENDING', KEYS[p + 1], G)
  local returned = 0
  if pending[4] then
    for _, c in ipairs(pending[4]) do
      if c[1] == RETURNED then returned = tonumber(c[2]) end
    end
  end
  ready = ready + length - pending[1] + returned
  inflight = inflight + pending[1] - returned
end
return {ready, redis.call('ZCARD', KEYS[7]), inflight, redis.call('XLEN', KEYS[9])}

-- @script finish
-- A consumer stops: its entries not in ARGV[2..] (still handed out) go back to the front of
-- their queue; the consumer is forgotten when it holds nothing. ARGV[1]: consumer.
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local holding = 0
for p = 0, 2 do
  local s = KEYS[p + 1]
  local ok, pending = pcall(redis.call, 'XPENDING', s, G, '-', '+', 10000, ARGV[1])
  if ok then
    for i = #pending, 1, -1 do
      local id = pending[i][1]
      if keep[id] then
        holding = holding + 1
      else
        redis.call('XCLAIM', s, G, RETURNED, 0, id, 'JUSTID')
        redis.call('LPUSH', KEYS[p + 4], id)
      end
    end
  end
end
if holding == 0 then
  for p = 0, 2 do redis.pcall('XGROUP', 'DELCONSUMER', KEYS[p + 1], G, ARGV[1]) end
  redis.call('ZREM', KEYS[13], ARGV[1])
end
return holding

-- @script prune
-- Removes consumers that hold no message and were idle for ARGV[1] ms (workers that died after
-- their messages were reclaimed). A live consumer removed this way is recreated by its next read.
local removed = 0
for p = 0, 2 do
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[p + 1], G)
  if ok then
    for _, c in ipairs(consumers) do
      local info = {}
      for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
      if info['pending'] == 0 and info['idle'] > tonumber(ARGV[1]) and info['name'] ~= RETURNED then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[p + 1], G, info['name'])
        removed = removed + 1
      end
    end
  end
end
return removed

-- @script limiter
-- KEYS[1]: zset of concurrency slots (token -> expiry ms), KEYS[2]: zset of run starts.
-- ARGV: token, now ms, max concurrency (0 = none), slot lease ms, rate limit (0 = none),
--       rate window ms. Returns 0 when acquired, else ms to wait before trying again.
local token, now = ARGV[1], tonumber(ARGV[2])
local max, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, window = tonumber(ARGV[5]), tonumber(ARGV[6])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, math.min(50, tonumber(first[2]) - now))
  end
end
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(first[2]) + window - now)
  end
  redis.call('ZADD', KEYS[2], now, token)
  redis.call('PEXPIRE', KEYS[2], window * 2)
end
if max > 0 then
  redis.call('ZADD', KEYS[1], now + lease, token)
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
return 0

-- @script live_workers
-- KEYS[1]: hash worker id -> info, KEYS[2]: zset worker id -> last seen ms. ARGV: oldest ms.
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, id in ipairs(stale) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return redis.call('HVALS', KEYS[1])
