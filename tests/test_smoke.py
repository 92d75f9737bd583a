async def test_health_and_ready(agentidp_client):
    response = await agentidp_client.get("/health")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}
    ready = await agentidp_client.get("/health/ready")
    assert ready.status_code == 200, await ready.get_json()
    assert (await ready.get_json())["checks"] == {"database": "ok", "kv": "ok"}
