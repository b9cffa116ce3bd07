-- wrk script for benches/load/compare.sh: each request carries the next of
-- the tokens in the file named by $BENCH_TOKENS (one a line), round-robin.
-- The requests are formatted once, on first use, so that wrk's own cost
-- per request stays close to that of a fixed request.
local path = os.getenv("BENCH_TOKENS")
local tokens = {}
for line in io.lines(path) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
assert(#tokens > 0, "no tokens in " .. tostring(path))

local requests = nil
local i = 0

request = function()
  if requests == nil then
    requests = {}
    for n, token in ipairs(tokens) do
      requests[n] = wrk.format(nil, nil, { ["Host"] = wrk.headers["Host"], ["Authorization"] = "Bearer " .. token })
    end
  end
  i = i % #requests + 1
  return requests[i]
end
