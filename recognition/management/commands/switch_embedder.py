"""Switch the served embedder, force a blocked switch, roll back, or say where a switch stands.

    python manage.py switch_embedder facenet+dlib [--force] [--wait]
    python manage.py switch_embedder --status
    python manage.py switch_embedder --force-blocked
    python manage.py switch_embedder --rollback

A switch runs in the background on the training cluster (recognition/embedder_switch.py); --wait
runs it in this process instead (no worker needed) and prints the evaluation.
"""

import time

from django.core.management.base import BaseCommand, CommandError

from recognition import embedder_switch, pipelines
from recognition.models import EmbedderSwitch


def describe(switch: EmbedderSwitch) -> str:
    lines = [
        f"#{switch.pk} {switch.previous or '?'} -> {switch.embedder}: {switch.get_status_display()}, {switch.done} of {switch.total} faces"
    ]
    for role in ("old", "new"):
        row = (switch.evaluation or {}).get(role)
        if row:
            frr = "-" if row["frr"] is None else f"{100 * row['frr']:.2f}%"
            far = "-" if row["far"] is None else f"{100 * row['far']:.2f}%"
            lines.append(
                f"  {role} {row['embedder']:<18} threshold {row['threshold']:.4f}  FRR {frr} ({row['not_found']}/{row['genuine_searches']})"
                f"  FAR {far} ({row['false_accepts']}/{row['impostor_searches']})"
            )
    evaluation = switch.evaluation or {}
    if evaluation.get("sampled"):
        lines.append(
            f"  searched {evaluation['new']['faces']} of the {evaluation['faces_both']} faces both embedders hold "
            "(a fixed-seed sample of people, EMBEDDER_SWITCH_EVAL_MAX_FACES)"
        )
    if switch.note:
        lines.append(f"  {switch.note}")
    if switch.skipped:
        lines.append(f"  not embedded: {', '.join(f'{k} {len(v)}' for k, v in switch.skipped.items())}")
    if switch.error and switch.status == EmbedderSwitch.Status.FAILED:
        lines.append(f"  error: {switch.error.splitlines()[0]}")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Switch the served embedder (re-embed, evaluate, switch if not worse), force a blocked switch, or roll back."

    def add_arguments(self, parser):
        parser.add_argument("embedder", nargs="?", help="facenet, facenet+dlib, ...")
        parser.add_argument("--force", action="store_true", help="activate even if it evaluates worse")
        parser.add_argument("--wait", action="store_true", help="run the switch in this process and wait for it")
        parser.add_argument("--status", action="store_true")
        parser.add_argument("--force-blocked", action="store_true", help="activate the blocked switch as evaluated")
        parser.add_argument("--rollback", action="store_true", help="serve the previous embedder again (instant)")

    def handle(self, embedder=None, force=False, wait=False, status=False, force_blocked=False, rollback=False, **options):
        try:
            if rollback:
                started = time.perf_counter()
                back = embedder_switch.rollback()
                self.stdout.write(
                    f"Rolled back in {time.perf_counter() - started:.2f} s: {back.embedder} is served again. {back.note}"
                )
                return
            if force_blocked:
                blocked = EmbedderSwitch.objects.filter(status=EmbedderSwitch.Status.BLOCKED).first()
                if blocked is None:
                    raise CommandError("No blocked switch.")
                switch = embedder_switch.force_blocked(blocked, queue=not wait)
            elif embedder:
                switch = embedder_switch.start_switch(
                    embedder, force=force, trigger=EmbedderSwitch.Trigger.COMMAND, queue=not wait
                )
            else:
                switch = None
            if switch is not None and wait:
                self.stdout.write(f"Switch #{switch.pk} to {switch.embedder}: running here ...")
                embedder_switch.run_switch(switch.pk)
        except embedder_switch.SwitchRefused as err:
            raise CommandError(str(err))
        self.stdout.write(f"Served: {pipelines.refresh_served_kind()} ({pipelines.served_embedder()})")
        for row in [switch] if switch else EmbedderSwitch.objects.all()[:5]:
            row.refresh_from_db()
            self.stdout.write(describe(row))
