from flask.testing import FlaskClient


def test_status_lists_every_gateway_port(client: FlaskClient) -> None:
    data = client.get("/status").get_json()
    services = [row["service"] for row in data["rows"]]
    assert sum(1 for s in services if s.startswith("CNS Gateway port:")) == 10
