"""Checks the deployment files of examples/deploy: they parse, and they say what the service
needs (CI runs this from `.ci/test`; it needs PyYAML)."""
import configparser
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).parent
problems = []

documents = [d for d in yaml.safe_load_all((HERE / "kubernetes.yaml").read_text()) if d]
by_kind = {d["kind"]: d for d in documents}
config = by_kind["ConfigMap"]["data"]
shutdown = int(config["SHUTDOWN_TIMEOUT_SECS"])
pod = by_kind["Deployment"]["spec"]["template"]["spec"]
container = pod["containers"][0]
if pod["terminationGracePeriodSeconds"] <= shutdown:
    problems.append("terminationGracePeriodSeconds must exceed SHUTDOWN_TIMEOUT_SECS")
if container["livenessProbe"]["httpGet"]["path"] != "/livez":
    problems.append("the liveness probe must ask /livez")
if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
    problems.append("the readiness probe must ask /readyz")
mounts = [m["mountPath"] for m in container["volumeMounts"]]
if not any(config["PUBSUB_PASSWORD_FILE"].startswith(m + "/") for m in mounts):
    problems.append("PUBSUB_PASSWORD_FILE must be in a mounted volume")
port = config["HEALTH_ADDR"].rsplit(":", 1)[1]
if str(container["ports"][0]["containerPort"]) != port:
    problems.append("the health port must be HEALTH_ADDR's")

unit = configparser.ConfigParser(strict=False, interpolation=None)
unit.optionxform = str
unit.read(HERE / "millstream-service.service")
service = unit["Service"]
stop = int(service["TimeoutStopSec"])
environment = service.get("Environment", "")
if stop <= shutdown:
    problems.append("TimeoutStopSec must exceed SHUTDOWN_TIMEOUT_SECS")
if service["KillSignal"] != "SIGTERM":
    problems.append("the unit must stop the service with SIGTERM")
if "LoadCredential" not in service:
    problems.append("the unit must pass the password as a credential")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"deploy files: {len(documents)} Kubernetes objects and a systemd unit, consistent")
