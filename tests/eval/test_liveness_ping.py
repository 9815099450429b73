"""The liveness ping (ping_quickly) uses a budget of its own, never the shared client's timeout_ms."""

import threading
import time

from reference_peer import EchoPolicy
from serving import running_server

from gr00t_client import PolicyClient
from gr00t_eval.rollout.liveness import ping_quickly

SLOW_S = 0.6
PING_MS = 300  # shorter than the slow call: a call given the ping's budget would time out


def test_a_quick_ping_leaves_the_shared_clients_timeout_to_the_other_threads_calls():
    with running_server(EchoPolicy()) as server:
        server.register_endpoint("slow", lambda: time.sleep(SLOW_S) or {"which": "slow"}, requires_input=False)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            client.ping()
            answers = []

            def call_slow():
                try:
                    answers.append(client.call_endpoint("slow", requires_input=False))
                except Exception as exc:  # noqa: BLE001 - recorded: the assertion below names it
                    answers.append(exc)

            holder = threading.Thread(target=call_slow)
            holder.start()
            time.sleep(0.1)  # the holder's call has the client: the ping and the next call wait their turn
            pinger = threading.Thread(target=ping_quickly, args=(client, PING_MS))
            pinger.start()
            time.sleep(0.1)
            seen_while_pinging = client.timeout_ms
            waiter = threading.Thread(target=call_slow)
            waiter.start()
            for thread in (holder, pinger, waiter):
                thread.join(10)
            assert seen_while_pinging == 5000
            assert answers == [{"which": "slow"}, {"which": "slow"}]
            assert client.timeout_ms == 5000
