#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/. Run from anywhere; rewrites them.

The input formats are documented on prefork::fuzzing::env and prefork::fuzzing::supervisor
(src/fuzzing.rs). Every seed here also runs under `cargo test` (fuzzing::tests).
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- env_protocol: flag byte, then 0xFF-separated fields in this order.
CHILD, WID, LPID, LFDS, LNAMES, OURPID = 1, 2, 4, 8, 16, 32


def env(flags, *fields):
    return bytes([flags]) + b"\xff".join(f if isinstance(f, bytes) else f.encode() for f in fields)


ENV = {
    "all_unset": env(0),
    "child_with_id": env(CHILD | WID, "1", "3"),
    "child_empty_is_not_child": env(CHILD | WID, "", "0"),
    "child_typo": env(CHILD | WID, "true", "03"),
    "worker_id_out_of_range": env(WID, "", "65536"),
    "worker_id_signed": env(CHILD | WID, "1", "+7"),
    "systemd_one_named": env(LPID | LFDS | LNAMES | OURPID, "", "", "1234", "1", "http"),
    "systemd_three_named": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "3", "web:admin:metrics"),
    "systemd_unnamed": env(LPID | LFDS | OURPID, "", "", "77", "2"),
    "systemd_other_pid": env(LPID | LFDS, "", "", "1234", "1"),
    "systemd_pid_with_plus": env(LPID | LFDS | OURPID, "", "", "+77", "1"),
    "systemd_pid_zero": env(LPID | LFDS | OURPID, "", "", "0", "1"),
    "systemd_fds_unset": env(LPID | OURPID, "", "", "77"),
    "systemd_fds_too_many": env(LPID | LFDS | OURPID, "", "", "77", "1025"),
    "systemd_fds_zero": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "0", "x"),
    "systemd_names_count_mismatch": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "2", "only"),
    "systemd_names_control_char": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "2", "ok:bad\tname"),
    "systemd_names_empty_entry": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "3", "a::c"),
    "systemd_name_too_long": env(LPID | LFDS | LNAMES | OURPID, "", "", "77", "1", "x" * 256),
    # Every field also goes through PREFORK_LISTEN_FDNAMES's parser and the builder's address
    # parser.
    "listener_keys_and_unix_addresses": env(CHILD | WID | LPID | LFDS | LNAMES, "#0:web", "unix:/run/app.sock", "unix:@app", "unix:", "unix:/" + "a" * 107),
    "listener_keys_bad": env(CHILD | WID, "web::admin", "unix:@"),
    "non_utf8_everywhere": env(0x3F, b"\xc3\x28", b"\xff\xfe", b"7\x80", b"\xe2\x82", b"a\xc0:b"),
}

# ---- supervisor: 6-byte header, then events (low nibble: event, high nibble: +50 ms each).
(ADV_S, DEADLINE, EXIT, UNKNOWN, TERM, INT, HUP, TTIN, TTOU, USR1, READY, SIGNAL, FAIL, SPAWNCTL,
 EXIT_TERMED, EXIT_KILLED) = range(16)
# exit kinds (operand 2 of EXIT): 0 code 0, 1 code 1, 2 EXIT_FATAL, 3 code 101, 4 SIGKILL,
# 5 SIGTERM, 6 SIGSEGV, 7 SIGUSR1, 8 SIGUSR2, 9 SIGABRT, 10 SIGHUP
CODE0, CODE1, FATAL, CODE101, KILLED, TERMED, SEGV, DIED_USR1 = range(8)
# operand of SIGNAL: an index into Signal::ALL
S_HUP, S_INT, S_QUIT, S_KILL, S_USR1, S_USR2, S_TERM, S_CHLD, S_TTIN, S_TTOU = range(10)
# operand of READY: pick one of the workers not ready yet, or ALL of them
ALL = 0xFF
# operand of SPAWNCTL with bit 7 set: an event of the binary upgrade
(U_USR2, U_READY, U_EXIT0, U_EXIT1, U_KILLED, U_START_FAILS, U_USR2_TWICE, U_READY_USR2) = range(0x80, 0x88)
# operand of SPAWNCTL: every live worker survives KILL from now on
UNKILLABLE = 0x88
# operand of SPAWNCTL with bits 6 and 7 set: a command of the operator (scale N: C_SCALE | (N - 1) << 3)
(C_STATUS, C_METRICS, C_RELOAD, C_UPGRADE, C_ROLLBACK, C_SCALE, C_STOP, C_USR2_UPGRADE) = range(0xC0, 0xC8)


def scale(n):
    return C_SCALE | ((n - 1) << 3)


# header flags
FAIL_AFTER_READY, FAIL_AFTER_SPAWN, SPAWN_COST, EXIT_ON_TERM, MANUAL_READY, PROBATION = 1, 8, 16, 32, 64, 128


def initial_spawn_failures(n):
    return n << 1


def sup(workers=2, threshold=3, window_100ms=99, interval_10ms=0, grace_100ms=50, flags=0, events=()):
    return bytes([workers - 1, threshold, window_100ms, interval_10ms, grace_100ms, flags, *events])


SUP = {
    "term_then_graceful_exits": sup(4, events=[TERM, 0x10 | EXIT_TERMED]),
    "term_stubborn_workers": sup(2, grace_100ms=20, events=[TERM, DEADLINE, EXIT_KILLED]),
    "double_term_kills_at_once": sup(3, events=[TERM, INT, EXIT_KILLED]),
    "crash_loop": sup(2, threshold=3, interval_10ms=5, events=[EXIT, 0, CODE1, DEADLINE] * 6),
    "crash_loop_zero_interval": sup(1, threshold=2, events=[0x20 | EXIT, 0, SEGV] * 4),
    "boot_loop_before_ready": sup(2, threshold=2, flags=MANUAL_READY,
                                  events=[READY, ALL] + [EXIT, 1, KILLED, DEADLINE] * 4 + [EXIT_KILLED]),
    "kills_after_ready_not_counted": sup(1, threshold=0, events=[DEADLINE, 0x10 | EXIT, 0, KILLED] * 8),
    "forwarded_usr1_kills": sup(2, threshold=0, events=[USR1, EXIT, 0, DIED_USR1, USR1, EXIT, 1, DIED_USR1]),
    "fatal_exit": sup(3, events=[0x40 | EXIT, 1, FATAL, EXIT_TERMED, DEADLINE, EXIT_KILLED]),
    "hup_graceful": sup(3, events=[HUP, EXIT_TERMED, EXIT_TERMED, EXIT_TERMED, TERM, EXIT_TERMED]),
    "hup_stubborn": sup(2, grace_100ms=10, events=[HUP, DEADLINE, EXIT_KILLED, DEADLINE, EXIT_KILLED]),
    "hup_waits_for_ready": sup(2, flags=MANUAL_READY,
                               events=[READY, ALL, HUP, ADV_S, 20, READY, 0, EXIT_TERMED, READY, 0]),
    "hup_replacement_fails_to_boot": sup(1, flags=MANUAL_READY,
                                         events=[READY, ALL, HUP, EXIT, 1, CODE1, DEADLINE, READY, 0,
                                                 0x40 | EXIT, 1, SEGV, DEADLINE, READY, ALL, EXIT_TERMED]),
    "hups_coalesce": sup(2, events=[HUP, HUP, HUP] + [EXIT_TERMED] * 4 + [HUP]),
    "hup_spawn_fails_then_ttou": sup(2, events=[SPAWNCTL, 1, HUP, TTOU, TTIN, DEADLINE, EXIT_TERMED, EXIT_KILLED]),
    "ttou_mid_restart": sup(2, flags=MANUAL_READY,
                            events=[READY, ALL, HUP, READY, 0, EXIT_TERMED, TTOU, EXIT_TERMED, EXIT_TERMED]),
    "ttin_ttou": sup(1, events=[TTIN, TTIN, TTOU, EXIT_TERMED, TTOU, TTOU, DEADLINE, EXIT_KILLED, TTIN]),
    "ttin_reopens_closing_slot": sup(2, events=[TTOU, TTIN, EXIT_TERMED, TTOU, TTOU, EXIT_TERMED]),
    "usr_and_other_signals": sup(2, events=[USR1, SIGNAL, S_USR2, SIGNAL, S_QUIT, SIGNAL, S_KILL,
                                            SIGNAL, S_CHLD, SIGNAL, S_TTIN, SIGNAL, S_HUP]),
    "initial_spawn_fails": sup(3, flags=initial_spawn_failures(1)),
    "spawn_hook_fails": sup(3, flags=FAIL_AFTER_SPAWN, events=[EXIT_KILLED]),
    "ttin_spawn_hook_fails": sup(2, events=[SPAWNCTL, 0x10, TTIN, EXIT_KILLED]),
    "ready_hook_fails": sup(2, flags=FAIL_AFTER_READY, events=[EXIT_KILLED]),
    "respawn_fails_then_retries": sup(2, events=[SPAWNCTL, 2, EXIT, 0, CODE0, DEADLINE, DEADLINE, DEADLINE]),
    "fail_mid_run": sup(2, events=[EXIT, 0, SEGV, FAIL, EXIT_KILLED]),
    "unknown_exits": sup(2, events=[UNKNOWN, 0, EXIT, 0, CODE0, UNKNOWN, 0, UNKNOWN, 200, UNKNOWN, 3]),
    "time_jumps": sup(2, flags=SPAWN_COST,
                      events=[ADV_S, 255, 0xF0 | DEADLINE, EXIT, 1, KILLED, ADV_S, 61, EXIT, 0, TERMED]),
    "zero_grace": sup(3, grace_100ms=0, events=[TTIN, TTOU, HUP, TERM]),
    "stop_with_exit_on_term": sup(4, flags=EXIT_ON_TERM, events=[EXIT, 2, CODE0]),
    # The binary upgrade (upgrade_timeout = the recover window, 10 s here).
    "upgrade_hands_over": sup(2, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY, EXIT_TERMED]),
    "upgrade_new_master_exits": sup(2, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_EXIT1]),
    "upgrade_times_out": sup(2, events=[SPAWNCTL, U_USR2, ADV_S, 11, SPAWNCTL, U_READY, SPAWNCTL, U_KILLED]),
    "upgrade_exec_fails": sup(1, events=[SPAWNCTL, U_START_FAILS]),
    "upgrade_term_stops_both": sup(2, events=[SPAWNCTL, U_USR2, TERM, EXIT_TERMED, SPAWNCTL, U_READY,
                                             DEADLINE, SPAWNCTL, U_KILLED]),
    "upgrade_usr2_twice": sup(1, events=[SPAWNCTL, U_USR2_TWICE, SPAWNCTL, U_READY_USR2, EXIT_TERMED]),
    "upgrade_during_hup_ttin_ttou": sup(2, events=[SPAWNCTL, U_USR2, HUP, EXIT_TERMED, EXIT_TERMED, TTIN, TTOU,
                                                  EXIT_TERMED, SPAWNCTL, U_READY, EXIT_TERMED]),
    # A stop always ends: workers that survive KILL are given up on after the margin.
    "stop_gives_up_on_unkillable": sup(2, grace_100ms=20, events=[SPAWNCTL, UNKILLABLE, TERM, DEADLINE, DEADLINE]),
    # The operator's commands: each answered once, when its outcome is known.
    "command_status_metrics_stop": sup(2, events=[SPAWNCTL, C_STATUS, SPAWNCTL, C_METRICS, SPAWNCTL, C_STOP,
                                                  SPAWNCTL, C_STOP, EXIT_TERMED]),
    "command_reload_and_hup_coalesce": sup(2, events=[SPAWNCTL, C_RELOAD, HUP, SPAWNCTL, C_RELOAD] + [EXIT_TERMED] * 5),
    "command_scale_up_down_superseded": sup(1, flags=MANUAL_READY, events=[READY, ALL, SPAWNCTL, scale(4), SPAWNCTL,
                                                                           scale(2), READY, ALL, SPAWNCTL, scale(1),
                                                                           SPAWNCTL, scale(3), TTOU, EXIT_TERMED]),
    "command_upgrade_joins_usr2": sup(2, events=[SPAWNCTL, C_USR2_UPGRADE, SPAWNCTL, C_UPGRADE, SPAWNCTL, C_RELOAD,
                                                 SPAWNCTL, U_READY, EXIT_TERMED]),
    "command_upgrade_rollbacks": sup(1, window_100ms=20, events=[SPAWNCTL, C_UPGRADE, SPAWNCTL, U_EXIT1, SPAWNCTL,
                                                                 C_UPGRADE, DEADLINE, SPAWNCTL, C_UPGRADE, SPAWNCTL,
                                                                 U_KILLED, SPAWNCTL, C_ROLLBACK]),
    "command_stop_answers_the_waiting": sup(1, flags=MANUAL_READY, events=[READY, ALL, SPAWNCTL, C_RELOAD, SPAWNCTL,
                                                                           scale(2), SPAWNCTL, C_UPGRADE, TERM,
                                                                           SPAWNCTL, C_RELOAD, EXIT_KILLED]),
    # Upgrade probation (as long as the window): the old master waits after the handover.
    "probation_rollback_by_hup": sup(2, flags=PROBATION, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY, EXIT_TERMED,
                                                                 HUP, SPAWNCTL, U_EXIT0]),
    "probation_rollback_asked_during_the_drain": sup(2, flags=PROBATION, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY,
                                                                                 SPAWNCTL, C_ROLLBACK, EXIT_TERMED]),
    "probation_expires": sup(2, window_100ms=20, flags=PROBATION, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY,
                                                                          EXIT_TERMED, SPAWNCTL, C_RELOAD, DEADLINE]),
    "probation_driver_fails": sup(2, flags=PROBATION, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY, EXIT_TERMED, FAIL]),
    "probation_term_ends_it": sup(2, flags=PROBATION, events=[SPAWNCTL, U_USR2, SPAWNCTL, U_READY, EXIT_TERMED, TERM]),
    "probation_stop_during_the_rollback": sup(2, flags=PROBATION | MANUAL_READY, events=[
        READY, ALL, SPAWNCTL, U_USR2, SPAWNCTL, U_READY, EXIT_TERMED, SPAWNCTL, C_ROLLBACK, TERM, EXIT_TERMED]),
    # Found by fuzzing: a rolling restart cut short by the handover, then a rollback (its
    # Reloaded never comes).
    "regression_rollback_after_a_restart_cut_short": bytes([1, 3, 99, 0, 50, 128] + [0x56] * 22 + [13, 128, 13, 129, 14, 6, 13, 130]),
    # Found by fuzzing: a forced stop (a failing spawn hook) after a hand-back kills the new
    # master still going.
    "regression_forced_stop_after_a_hand_back": bytes([1, 3, 99, 0, 50, 128, 86, 86, 86, 86, 86, 86, 13, 128, 13, 129, 14, 6, 13, 86, 86, 13, 128, 13, 129, 130, 13, 129, 14, 6, 13]),
    # Found by fuzzing: a rollback asked during the drain, then TERM: answered once the old
    # workers are gone (the probation ended).
    "regression_rollback_asked_then_term": bytes([1, 0, 202, 154, 59, 192, 10, 255, 13, 128, 13, 129, 58, 14, 13, 196, 4, 14]),
    # Found by fuzzing: TERM during the rollback's start, then `rollback`: refused (the
    # stop), not joined to the rollback the stop ended.
    "regression_rollback_after_a_stop_of_the_rollback": bytes([1, 3, 99, 0, 50, 192, 10, 255, 13, 128, 13, 129, 14, 45, 196, 4, 10, 255, 13, 128, 13, 14, 189, 220, 220, 220, 220, 220, 220, 220, 189, 189]),
    # Found by fuzzing: a recycled worker still retiring at a handover with a probation, then
    # a rollback: its slot is not closed (the rollback brings it back).
    "regression_retiring_at_a_handover_then_rollback": bytes.fromhex("019c00322a800d6d6d800d813a0e0d00000606060606060e0d000006060606060635000006060606060606060606060606060606060000800dc201"),
    # Found by fuzzing: a rollback asked during the drain, then the new master exits: the
    # probation ends with it, and the rollback is answered.
    "regression_new_master_exits_with_a_rollback_asked": bytes.fromhex("0103630032c00affffffffffffff0dff0d800d81080dc44343c4040aff0d800d0ebd033db4bdbdbdbdbdbdbdffffffffffffff"),
    # Found by fuzzing: a failure during the rollback's start, then `rollback`: refused at
    # once (a failing run never rolls back).
    "regression_rollback_after_a_failure": bytes.fromhex("0103630032c00aff0d800d81ed51ededededededededededededededed0aff0d80ededededededededed00ca9a263bededededededededed0dc401ffffffffffffdfff14aad30e"),
    # Found by fuzzing: a forced stop while the handed-back new master's KILL is already due:
    # one KILL.
    "regression_forced_stop_with_a_kill_due": bytes.fromhex("00fe630632805656565656560d800d810e060d56560d800d81860d81400e060d"),
    # Found by fuzzing (many retiring workers, each with its own KILL deadline), kept verbatim.
    "regression_many_retiring_deadlines": bytes.fromhex(
        "0d0000006900000000636302ff000000ffff07ffd8d8d8d8d8d8ff3002"),
    # Found by fuzzing: `scale 8` whose first spawn fails and stops the run (its other slots'
    # spawns are dropped, their Steer actions are not).
    # Found by fuzzing: a `scale` reached while a worker of it was killed as stuck (not an
    # answer until its replacement serves).
    "regression_scale_with_a_stuck_worker": bytes.fromhex("01080000000000080003cdcd5d5d5d5d5d5d5d5dcdcdcdcdcd630032000300020000030003330303"),
    # Found by fuzzing: `scale` down through a slot mid-restart; the restart's next spawn
    # failed and stopped the run before the other slots' workers were told.
    "regression_scale_down_mid_restart": bytes.fromhex(
        "02000000010000000000017676ffff26ff0700ffff010109f91700edededffffffffffff76cd25cdcd"),
    "regression_scale_spawn_fails_and_stops": bytes.fromhex("010000ff020000fdfd00fd020000fdfd00"),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        os.remove(os.path.join(d, name))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


# ---- control_request: one request line each.
CONTROL = {
    "status": b"status", "status_crlf": b"status\r", "scale_4": b"scale 4", "scale_zero": b"scale 0",
    "scale_huge": b"scale 99999999999999999999", "scale_missing": b"scale", "scale_signed": b"scale +4",
    "blanks": b" \t reload \t", "unknown": b"restart", "extra_word": b"stop now", "empty": b"",
    "not_utf8": b"\xff\xfe\xc3(", "control_chars": b"\x00\x01\x1b[31mstatus\x7f",
    "quotes_and_backslashes": b'"\\"\\\\u0041', "upgrade": b"upgrade", "rollback": b"rollback",
    "metrics": b"metrics", "long_word": b"x" * 200,
}

write("env_protocol", ENV)
write("supervisor", SUP)
write("control_request", CONTROL)
