"""Security on the real processes: Valkey AUTH and an ACL user, secrets from files and the
environment (never argv, never logged), and pip-audit over the locked dependency set.

gRPC TLS / mTLS / bearer-token refusal is covered in tests/serving/test_security.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from persona.v1 import service_pb2 as pb
from persona.v1 import service_pb2_grpc

from benchmarks.load import VERSION, stop_process, wait_serving, write_users
from services.config import WindowConfig
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack, StackConfig, free_ports
from services.store.client import connect
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.faults.support import compare
from tests.integration.ingest_support import kcfg_for, quirky_events, read_topic, truth

pytestmark = [pytest.mark.integration, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
PERSONA = [sys.executable, "-m", "services.cli"]


def _secure(port: int, admin_pw: str, user_pw: str) -> None:
    """requirepass on the default user and an ACL user `persona`, set over the wire (not on
    valkey-server's command line, where `ps` would show them)."""
    r = redis.Redis(port=port)
    try:
        r.config_set("requirepass", admin_pw)
    finally:
        r.close()
    admin = redis.Redis(port=port, password=admin_pw)
    try:
        # Persona's keys and scripts, no admin commands (FLUSHALL, CONFIG, ... are @dangerous);
        # INFO is @dangerous too but `connect` asks it whether the node is a cluster.
        admin.execute_command(
            "ACL", "SETUSER", "persona", "on", f">{user_pw}", "~*", "&*", "+@all",
            "-@dangerous", "+info",
        )  # fmt: skip
    finally:
        admin.close()


def _ps() -> str:
    return subprocess.run(
        ["ps", "-ww", "-eo", "args"], capture_output=True, text=True, timeout=30
    ).stdout


def test_valkey_auth_and_acl_secrets_from_env_and_files_never_in_argv_or_logs(
    tmp_path: Path, report: Callable[..., None]
) -> None:
    admin_pw, user_pw, token = (secrets.token_hex(16) for _ in range(3))
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(user_pw + "\n")
    pw_file.chmod(0o600)
    token_file = tmp_path / "auth-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    with EmbeddedStack(StackConfig(cluster=False, partitions=2)) as stack:
        a = stack.addresses
        port = int(a.redis.rsplit(":", 1)[1])
        _secure(port, admin_pw, user_pw)

        # Without credentials, or with wrong ones, the store refuses.
        for kw in ({}, {"username": "persona", "password": "wrong"}):
            c = redis.Redis(port=port, **kw)  # type: ignore[arg-type]
            with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
                c.ping()
            c.close()
        refused = subprocess.run(
            [*PERSONA, "cutover", "status", "--redis", a.redis],
            cwd=ROOT, env={k: v for k, v in os.environ.items() if "REDIS" not in k},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "authenticat" in refused.stderr.lower(), refused.stderr[-2000:]

        # The ACL user may use Persona's keys but not run admin commands.
        env = {
            **os.environ,
            "PERSONA_REDIS_USERNAME": "persona",
            "PERSONA_REDIS_PASSWORD_FILE": str(pw_file),
            "PERSONA_GROUP": f"sec-{uuid.uuid4().hex}",
        }
        os.environ.update({k: env[k] for k in ("PERSONA_REDIS_USERNAME",
                                               "PERSONA_REDIS_PASSWORD_FILE")})  # fmt: skip
        try:
            client = connect(a.redis)  # credentials from the environment
        finally:
            for k in ("PERSONA_REDIS_USERNAME", "PERSONA_REDIS_PASSWORD_FILE"):
                os.environ.pop(k, None)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.flushall()
            ids = write_users(VectorStore(client), 50)

            # ingest, with the password from a file named in the environment
            kcfg = kcfg_for(a.bootstrap, a.topic, env["PERSONA_GROUP"])
            events = quirky_events(users=40, n=400, seed=5, prefix="sec")
            produce_events(kcfg, events)
            ing = subprocess.run(
                [*PERSONA, "ingest", "--until-idle", "--bootstrap", a.bootstrap,
                 "--redis", a.redis, "--topic", a.topic],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert ing.returncode == 0, ing.stderr[-3000:]
            ref = truth(read_topic(a.bootstrap, a.topic), WindowConfig())
            lost, extra = compare(WindowStore(client, WindowConfig()), ref)
            assert (lost, extra) == (0, 0)

            # serve, with the store password and the bearer token from files
            [gport] = free_ports(1)
            log_path = tmp_path / "serve.log"
            with open(log_path, "ab") as out:
                argv = [*PERSONA, "serve", "--no-index", "--host", "127.0.0.1", "--port",
                        str(gport), "--redis", a.redis, "--dim", "8", "--grace-s", "0.5",
                        "--auth-token-file", str(token_file)]  # fmt: skip
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_serving(gport, proc, 60)
                with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
                    stub = service_pb2_grpc.UserEmbeddingServiceStub(ch)
                    req = pb.GetEmbeddingsRequest(user_ids=ids[:5])
                    auth = (("authorization", f"Bearer {token}"),)
                    resp = stub.GetEmbeddings(req, timeout=5, metadata=auth)
                    assert resp.model_version == VERSION
                    assert all(s == pb.EMBEDDING_STATUS_FOUND for s in resp.statuses)
                    with pytest.raises(grpc.RpcError) as ei:
                        stub.GetEmbeddings(req, timeout=5)
                    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert token not in (ei.value.details() or "")
                ps = _ps()
                assert f"--port {gport}" in ps  # we see the server's argv ...
            finally:
                stop_process(proc)
        finally:
            client.close()
    # ... and no secret is in any argv, nor in any log or output of the runs.
    texts = {
        "ps": ps,
        "ingest": ing.stdout + ing.stderr,
        "serve": log_path.read_text(),
        "refused": refused.stdout + refused.stderr,
    }
    leaks = [
        f"{what} in {where}"
        for where, text in texts.items()
        for what, s in (
            ("redis password", user_pw),
            ("admin password", admin_pw),
            ("token", token),
        )
        if s in text
    ]
    assert leaks == []
    report(
        scenario="Security: Valkey requirepass + ACL user, credentials from env/file",
        produced=len(events),
        applied=sum(len(ref.window(u)) for u in ref.users),
        duplicated=extra,
        lost=lost,
        recovery_s=0.0,
        note="no-password and wrong-password clients refused (NOAUTH / WRONGPASS);"
        " `persona cutover` without credentials exits non-zero; ACL user `persona` gets"
        " NOPERM on FLUSHALL; `persona ingest` and `persona serve` ran with the password from"
        " PERSONA_REDIS_PASSWORD_FILE and the bearer token from --auth-token-file; neither"
        " secret in `ps -eo args`, in the logs or the output; windows equal the truth",
    )


def test_pip_audit_over_the_lock(report: Callable[..., None]) -> None:
    """pip-audit over requirements.lock, the runtime set the image carries (no resolution: the
    lock pins and hashes everything). Here no
    vulnerability service may be reachable: then the row says so and the test does not
    fail; a vulnerability found in an audited package does fail it."""
    lock = ROOT / "requirements.lock"
    n_locked = sum(1 for line in lock.read_text().splitlines() if "==" in line)
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        report(scenario="pip-audit over requirements.lock", produced=n_locked, applied=0,
               duplicated=0, lost=0, recovery_s=0.0,
               note="pip-audit not installed (pip install pip-audit==2.10.1)")  # fmt: skip
        pytest.skip("pip-audit not installed")
    argv = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--disable-pip",
            "--progress-spinner", "off", "-f", "json"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    deps = json.loads(run.stdout)["dependencies"] if run.stdout.strip() else []
    audited = [d for d in deps if "skip_reason" not in d]
    vulns = [(d["name"], v["id"]) for d in audited for v in d.get("vulns", [])]
    skipped = len(deps) - len(audited)
    first_skip = next((d["skip_reason"] for d in deps if "skip_reason" in d), "")
    if not deps:
        note = f"pip-audit failed (rc {run.returncode}): {run.stderr.strip()[-300:]}"
    elif not audited:
        note = (
            f"no vulnerability service reachable: 0 of {len(deps)} packages audited; every"
            f" one skipped with e.g. '{first_skip}' (pip-audit still prints 'No known"
            " vulnerabilities found'); run it where pypi.org or osv.dev is reachable"
        )
    else:
        note = f"{len(audited)} audited, {skipped} skipped; vulnerabilities: {vulns or 'none'}"
    report(scenario="pip-audit 2.10.1 over requirements.lock", produced=len(deps),
           applied=len(audited), duplicated=0, lost=len(vulns), recovery_s=0.0,
           note=note)  # fmt: skip
    assert vulns == [], vulns
