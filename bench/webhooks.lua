-- wrk script for bench/webhooks.py: cycle through a pool of pre-signed Stripe deliveries.
--   wrk -t T -c C -d S --latency -s bench/webhooks.lua URL -- POOL_FILE T
-- POOL_FILE holds records "<Stripe-Signature>\t<body length>\n<body>"; thread k of T sends records
-- k, k+T, k+2T, ... in order (every request a distinct event), counting how often it ran out and
-- started over (`wraps`: the bench rejects a hub run that repeated events). done() prints one line
-- "BENCH requests=.. ..." with the figures of wrk's latency histogram (the one --latency prints).

local threads = {}
local count = 0

function setup(thread)
   thread:set("id", count)
   table.insert(threads, thread)
   count = count + 1
end

function init(args)
   local total = tonumber(args[2])
   local f = assert(io.open(args[1], "rb"))
   pool, wraps, next_index = {}, 0, 1
   local index = 0
   while true do
      local header = f:read("*l")
      if not header then break end
      local sig, length = header:match("^(.-)\t(%d+)$")
      local body = f:read(tonumber(length))
      if index % total == id then
         pool[#pool + 1] = wrk.format("POST", wrk.path, {
            ["Content-Type"] = "application/json; charset=utf-8",
            ["Stripe-Signature"] = sig,
         }, body)
      end
      index = index + 1
   end
   f:close()
   assert(#pool > 0, "pool file " .. args[1] .. " has no record for thread " .. id)
end

function request()
   local r = pool[next_index]
   next_index = next_index + 1
   if next_index > #pool then
      next_index, wraps = 1, wraps + 1
   end
   return r
end

function done(summary, latency, requests)
   local wrapped = 0
   for _, thread in ipairs(threads) do
      wrapped = wrapped + thread:get("wraps")
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d non2xx=%d socket_errors=%d timeouts=%d p50_us=%d p99_us=%d max_us=%d wraps=%d\n",
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max, wrapped))
end
