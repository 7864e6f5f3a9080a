"""`python -m trainer.serve`: flag errors are one line and exit 2; SIGTERM answers the request in flight (held by
the model process), then the server and its model process exit 0, and the API key is never printed."""

import signal
import socket
import threading

import openai

from common.cli import run_cli
from tests.trainer.serving.conftest import MODEL, CliServer, running
from trainer.serving.cli import PROG, main


def test_flag_errors_are_one_line_and_exit_2(planned_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("TRACE_TEST_UNSET", raising=False)
    ckpt = str(planned_checkpoint)
    busy = socket.create_server(("127.0.0.1", 0))
    cases = [
        (["--max_inputs", "10", "--max_queue", "5"], "--max_inputs 10 is over --max_queue 5"),
        (["--api_key_env", "TRACE_TEST_UNSET"], "--api_key_env TRACE_TEST_UNSET: that environment variable is not"),
        (["--port", "70000"], "--port 70000 is not a port"),
        (["--max_image_pixels", "0"], "--max_image_pixels"),
        (["--batch_sise", "3"], "unknown flag --batch_sise (did you mean --batch_size?)"),
        (["--port", str(busy.getsockname()[1])], "cannot listen there"),
        (["--device", "cuda:7"], "--device cuda:7"),
    ]
    try:
        for flags, message in cases:
            assert run_cli(main, ["--checkpoint", ckpt, *flags], prog=PROG) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1 and err.startswith(PROG)
    finally:
        busy.close()
    assert run_cli(main, ["--checkpoint", "/no/such/folder", "--port", "0"], prog=PROG) == 2
    assert "--checkpoint /no/such/folder" in capsys.readouterr().err


def test_sigterm_answers_the_request_in_flight_then_exits(planned_checkpoint, tmp_path):
    key = "sigterm-test-key-0123"
    server = CliServer(planned_checkpoint, tmp_path / "stderr.log", "--batch_size", "1", "--max_new_tokens", "64",
                       "--api_key_env", "TRACE_TEST_KEY", env={"TRACE_TEST_KEY": key})
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
        answer = {}
        query = {"text": "Make the square blue.", "dataset": "cirr", "task_id": 7}
        sender = threading.Thread(target=lambda: answer.update(res=client.embeddings.create(
            model=MODEL, input=[query] * 32, extra_body={"mode": "always"})))
        sender.start()
        server.wait_for(lambda h: h["waiting"] >= 32)
        model_pid = server.model_pid
        server.proc.send_signal(signal.SIGTERM)
        sender.join(120)
        assert len(answer["res"].data) == 32
        assert server.proc.wait(60) == 0 and not running(model_pid)
        out = server.proc.stdout.read()
        assert "stopped" in out and key not in server.line + out + server.stderr()
    finally:
        server.close()
