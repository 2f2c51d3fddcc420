-- Huddle cluster room state in Redis. One script, one operation per call (ARGV[1]); every
-- change to rooms runs here so it is atomic and its events are published in the order the
-- changes happened. ARGV[2] is the key prefix. Keys (with prefix P):
--   P.room:<key>      hash: name, private ('0'/'1'), pw (password hash or ''), seq (event counter)
--   P.members:<key>   hash: peer id -> {"nickname", "nick_key", "node", "hand" (ms, if raised)}
--   P.nicks:<key>     hash: nick_key (lower-cased nickname) -> peer id
--   P.history:<key>   list of chat messages (JSON), newest last
--   P.rooms           set of room keys
--   P.nodes           set of live node ids; P.node:<id> expires unless the node beats
--   P.node-peers:<id> set of "<room key>\n<peer id>" the node's clients hold
--   P.webhook-queue   list of webhook events (JSON), oldest first, at most 10000
--   P.webhooks-on     exists while some node delivers webhooks (events are queued only then)
--   P.webhook-leader  the node that delivers them (expires unless it polls)
-- Channels: P.ev:room (room events, every node filters by its local members),
--           P.ev:list (room list changes), P.ev:node:<id> (relays to that node's clients).
-- Keys are derived here rather than passed as KEYS: this targets a single Redis server, not
-- Redis Cluster slots.

local op = ARGV[1]
local P = ARGV[2]

local function room_key(key) return P .. 'room:' .. key end
local function members_key(key) return P .. 'members:' .. key end
local function nicks_key(key) return P .. 'nicks:' .. key end
local function history_key(key) return P .. 'history:' .. key end
local function node_peers_key(node) return P .. 'node-peers:' .. node end
local ROOMS = P .. 'rooms'
local NODES = P .. 'nodes'

-- Publishes a room event stamped with the room's next sequence number.
local function publish_room(key, exclude, msg_json)
  local seq = redis.call('HINCRBY', room_key(key), 'seq', 1)
  local ex = ''
  if exclude then ex = ',"exclude":' .. cjson.encode(exclude) end
  redis.call('PUBLISH', P .. 'ev:room',
    '{"room":' .. cjson.encode(key) .. ',"seq":' .. seq .. ex .. ',"msg":' .. msg_json .. '}')
  return seq
end

-- Queues a webhook event for the delivering node, in the order changes happen, if any node
-- delivers webhooks. Ids are cluster-wide, so each event is one delivery however many nodes run.
local HOOKS = P .. 'webhook-queue'
local HOOKS_MAX = 10000
local function hook(ev)
  if redis.call('EXISTS', P .. 'webhooks-on') == 0 then return end
  local t = redis.call('TIME')
  ev.id = 'c-' .. redis.call('INCR', P .. 'webhook-seq')
  ev.time_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('RPUSH', HOOKS, cjson.encode(ev))
  redis.call('LTRIM', HOOKS, -HOOKS_MAX, -1)
end

local function publish_list(msg_json)
  local seq = redis.call('INCR', P .. 'list-seq')
  redis.call('PUBLISH', P .. 'ev:list', '{"seq":' .. seq .. ',"msg":' .. msg_json .. '}')
end

local function is_locked(key)
  local pw = redis.call('HGET', room_key(key), 'pw')
  return (pw and pw ~= '') and true or false
end

-- Tells room-list subscribers the head count of a public room.
local function announce(key, capacity)
  if redis.call('HGET', room_key(key), 'private') == '1' then return end
  publish_list(cjson.encode({
    type = 'room_updated',
    room = {
      name = redis.call('HGET', room_key(key), 'name'),
      people = redis.call('HLEN', members_key(key)),
      capacity = capacity,
      locked = is_locked(key),
    },
  }))
end

-- Takes a peer out of a room; closes the room when it empties. Returns 1 if the peer was there.
local function leave(key, peer, node, reason, capacity)
  local member = redis.call('HGET', members_key(key), peer)
  if not member then return 0 end
  redis.call('HDEL', members_key(key), peer)
  local nick_key = cjson.decode(member).nick_key
  if redis.call('HGET', nicks_key(key), nick_key) == peer then
    redis.call('HDEL', nicks_key(key), nick_key)
  end
  redis.call('SREM', node_peers_key(node), key .. '\n' .. peer)
  local name = redis.call('HGET', room_key(key), 'name')
  hook({ event = 'participant_left', room = name, reason = reason,
    participant = { id = peer, nickname = cjson.decode(member).nickname } })
  if redis.call('HLEN', members_key(key)) == 0 then
    hook({ event = 'room_finished', room = name })
    local private = redis.call('HGET', room_key(key), 'private')
    redis.call('DEL', room_key(key), members_key(key), nicks_key(key), history_key(key))
    redis.call('SREM', ROOMS, key)
    if private ~= '1' then
      publish_list(cjson.encode({ type = 'room_closed', name = name }))
    end
    return 1
  end
  publish_room(key, false, cjson.encode({
    type = 'peer_left', room = name, peer_id = peer, reason = reason,
  }))
  announce(key, capacity)
  return 1
end

-- Removes every client of a node that stopped beating (or is shutting down).
local function retire(node, reason, capacity)
  redis.call('SREM', NODES, node)
  redis.call('DEL', P .. 'node:' .. node)
  local count = 0
  for _, entry in ipairs(redis.call('SMEMBERS', node_peers_key(node))) do
    local nl = string.find(entry, '\n', 1, true)
    if nl then
      count = count + leave(string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1), node,
        reason, capacity)
    end
  end
  redis.call('DEL', node_peers_key(node))
  return count
end

if op == 'join' then
  local key, name, peer, nick, nick_key, node = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local capacity, max_rooms = tonumber(ARGV[9]), tonumber(ARGV[10])
  local private, pw, rejoining = ARGV[11], ARGV[12], ARGV[13] == '1'
  if redis.call('EXISTS', room_key(key)) == 1 then
    local stored = redis.call('HGET', room_key(key), 'pw')
    if stored and stored ~= '' and not rejoining then
      if pw == '' then return { 'password_required', {}, {}, {} } end
      if pw ~= stored then return { 'wrong_password', {}, {}, {} } end
    end
    local n = redis.call('HLEN', members_key(key))
    if n >= capacity then
      return { 'room_full', { tostring(n), redis.call('HGET', room_key(key), 'name') }, {}, {} }
    end
    if redis.call('HEXISTS', nicks_key(key), nick_key) == 1 then
      return { 'nickname_taken', {}, {}, {} }
    end
  else
    if redis.call('SCARD', ROOMS) >= max_rooms then
      return { 'too_many_rooms', {}, {}, {} }
    end
    if rejoining then private, pw = ARGV[14], ARGV[15] end
    redis.call('HSET', room_key(key), 'name', name, 'private', private, 'pw', pw, 'seq', 0)
    redis.call('SADD', ROOMS, key)
    hook({ event = 'room_started', room = name })
  end
  local peers = redis.call('HGETALL', members_key(key))
  redis.call('HSET', members_key(key), peer,
    cjson.encode({ nickname = nick, nick_key = nick_key, node = node }))
  redis.call('HSET', nicks_key(key), nick_key, peer)
  redis.call('SADD', node_peers_key(node), key .. '\n' .. peer)
  local room_name = redis.call('HGET', room_key(key), 'name')
  hook({ event = 'participant_joined', room = room_name,
    participant = { id = peer, nickname = nick } })
  local seq = publish_room(key, peer, cjson.encode({
    type = 'peer_joined', room = room_name, peer = { id = peer, nickname = nick },
  }))
  announce(key, capacity)
  return {
    'ok',
    { room_name, tostring(seq), redis.call('HGET', room_key(key), 'private'),
      redis.call('HGET', room_key(key), 'pw') },
    peers,
    redis.call('LRANGE', history_key(key), 0, -1),
  }
elseif op == 'hooks' then
  -- A node that delivers webhooks polls: it keeps events queued, and the leader (the first
  -- to poll while none holds the lease) takes up to `count` of them, oldest first.
  local node, lead_ms, on_ms, count = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  redis.call('SET', P .. 'webhooks-on', '1', 'PX', on_ms)
  local leader = redis.call('GET', P .. 'webhook-leader')
  if leader and leader ~= node then return {} end
  redis.call('SET', P .. 'webhook-leader', node, 'PX', lead_ms)
  local out = redis.call('LRANGE', HOOKS, 0, count - 1)
  if #out > 0 then redis.call('LTRIM', HOOKS, #out, -1) end
  return out
elseif op == 'leave' then
  return leave(ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
elseif op == 'chat' then
  local key, peer, nick, text, now_ms, history_len = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  if redis.call('HEXISTS', members_key(key), peer) == 0 then return 0 end
  local id = redis.call('INCR', P .. 'chat-id')
  local message = '{"id":' .. id .. ',"from":' .. cjson.encode(peer) .. ',"nickname":' ..
    cjson.encode(nick) .. ',"text":' .. cjson.encode(text) .. ',"time_ms":' .. now_ms .. '}'
  redis.call('RPUSH', history_key(key), message)
  redis.call('LTRIM', history_key(key), -history_len, -1)
  publish_room(key, false, '{"type":"chat","message":' .. message .. '}')
  return 1
elseif op == 'relay' then
  local key, from, to, msg_json = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  if redis.call('HEXISTS', members_key(key), from) == 0 then return 0 end
  local target = redis.call('HGET', members_key(key), to)
  if not target then return 0 end
  local node = cjson.decode(target).node
  redis.call('PUBLISH', P .. 'ev:node:' .. node,
    '{"to":' .. cjson.encode(to) .. ',"msg":' .. msg_json .. '}')
  return 1
elseif op == 'nick' then
  local key, peer, nick, nick_key = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local current = redis.call('HGET', members_key(key), peer)
  if not current then return 'not_in_room' end
  local owner = redis.call('HGET', nicks_key(key), nick_key)
  if owner and owner ~= peer then return 'nickname_taken' end
  local member = cjson.decode(current)
  if redis.call('HGET', nicks_key(key), member.nick_key) == peer then
    redis.call('HDEL', nicks_key(key), member.nick_key)
  end
  redis.call('HSET', nicks_key(key), nick_key, peer)
  member.nickname = nick
  member.nick_key = nick_key
  redis.call('HSET', members_key(key), peer, cjson.encode(member))
  publish_room(key, false, cjson.encode({ type = 'nickname_changed', peer_id = peer, nickname = nick }))
  return 'ok'
elseif op == 'hand' then
  -- ARGV[5]: the time to record if the hand goes up, or '' to lower it. A hand already up
  -- keeps its time (its place in the queue); a new one goes after every hand already up, so
  -- the stamps give the order of raising even across nodes whose clocks differ.
  local key, peer, at = ARGV[3], ARGV[4], ARGV[5]
  local current = redis.call('HGET', members_key(key), peer)
  if not current then return 'not_in_room' end
  local member = cjson.decode(current)
  if at == '' then
    member.hand = nil
  elseif not member.hand then
    local stamp = tonumber(at)
    for _, json in ipairs(redis.call('HVALS', members_key(key))) do
      local other = cjson.decode(json)
      if other.hand and other.hand >= stamp then stamp = other.hand + 1 end
    end
    member.hand = stamp
  end
  redis.call('HSET', members_key(key), peer, cjson.encode(member))
  publish_room(key, false, cjson.encode({ type = 'hand_changed', peer_id = peer, raised_at_ms = member.hand }))
  return 'ok'
elseif op == 'react' then
  local key, peer, emoji = ARGV[3], ARGV[4], ARGV[5]
  if redis.call('HEXISTS', members_key(key), peer) == 0 then return 'not_in_room' end
  publish_room(key, false, cjson.encode({ type = 'reaction', peer_id = peer, emoji = emoji }))
  return 'ok'
elseif op == 'list' then
  local out = {}
  for _, key in ipairs(redis.call('SMEMBERS', ROOMS)) do
    if redis.call('HGET', room_key(key), 'private') ~= '1' then
      table.insert(out, redis.call('HGET', room_key(key), 'name') or key)
      table.insert(out, tostring(redis.call('HLEN', members_key(key))))
      table.insert(out, is_locked(key) and '1' or '0')
    end
  end
  return { tostring(redis.call('GET', P .. 'list-seq') or 0), out }
elseif op == 'beat' then
  local node, ttl_ms, first = ARGV[3], ARGV[4], ARGV[5] == '1'
  if not first and redis.call('SISMEMBER', NODES, node) == 0 then return 'reaped' end
  redis.call('SADD', NODES, node)
  redis.call('SET', P .. 'node:' .. node, '1', 'PX', ttl_ms)
  return 'ok'
elseif op == 'reap' then
  local capacity = tonumber(ARGV[3])
  local count = 0
  for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
    if redis.call('EXISTS', P .. 'node:' .. node) == 0 then
      count = count + retire(node, 'timed_out', capacity)
    end
  end
  return count
elseif op == 'retire' then
  return retire(ARGV[3], 'disconnected', tonumber(ARGV[4]))
end
return redis.error_reply('unknown huddle cluster operation ' .. tostring(op))
