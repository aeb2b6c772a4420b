-- wrk_post_json.lua — every request is a POST of a 1 KiB JSON document that
-- carries the secrets a scrub policy removes (password, email, card number,
-- SSN), so umbra-mirror-json and umbra-mirror-scrub put the same bytes on
-- the wire; only the mirror's scrub policy differs. Results as wrk_report.lua.
dofile("bench/wrk_report.lua")

local items = {}
for i = 1, 12 do
  items[#items + 1] = string.format(
    '{"sku":"SKU-%04d","qty":%d,"note":"gift wrap, deliver after 6pm, ring twice"}', i, i)
end
local doc = '{"user":{"name":"Ada Lovelace","email":"ada.lovelace@example.com",' ..
  '"ssn":"123-45-6789"},"password":"correct horse battery staple",' ..
  '"card":"4111 1111 1111 1111","items":[' .. table.concat(items, ",") .. ']}'

wrk.method = "POST"
wrk.body = doc
wrk.headers["Content-Type"] = "application/json"
