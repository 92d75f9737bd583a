-- wrk -t2 -c64 -d5s -s example.lua http://127.0.0.1:3100/token
-- POSTs a client_credentials request authenticated as client1:secret1 (HTTP Basic).
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=api%3Aread"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic Y2xpZW50MTpzZWNyZXQx" -- base64("client1:secret1")
