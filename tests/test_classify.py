"""classify(): one test per behaviour, on named .eml fixtures and small built messages."""

from __future__ import annotations

import email
import json
from email import policy
from email.message import EmailMessage, Message
from email.policy import Policy
from pathlib import Path

import pytest

from inbound.autoreply import oof_subject_anywhere, oof_subject_start
from inbound.bounces import BounceInfo, best_status, parse_feedback, reason_for
from inbound.classify import RULES, ClassifierConfig, Verdict, classify, parse_dsn

FIXTURES = Path(__file__).parent / "fixtures" / "classify"
CONFIG = ClassifierConfig(
    instance_name="causerie-test",
    our_domains=("lists.example.net",),
    list_ids=("rd.lists.example.net",),
)
POLICIES = pytest.mark.parametrize(
    "pol", [policy.compat32, policy.default], ids=["compat32", "default"]
)


def load(name: str, pol: Policy = policy.compat32) -> Message:
    return email.message_from_bytes((FIXTURES / name).read_bytes(), policy=pol)


def build(headers: dict[str, str], body: str = "Hello.\n", pol: Policy = policy.compat32
          ) -> Message:
    text = "".join(f"{k}: {v}\n" for k, v in headers.items()) + "\n" + body
    return email.message_from_string(text, policy=pol)


PERSON = {
    "From": "Alice Martin <alice.martin@corp.example.com>",
    "To": "rd@lists.example.net",
    "Subject": "Lab schedule",
    "Message-ID": "<lab-1@corp.example.com>",
    "Date": "Tue, 4 Jun 2024 10:00:00 +0200",
}
ALICE = "alice.martin@corp.example.com"

# (fixture, envelope sender, expected kind)
CASES = [
    # Out-of-office replies in six languages, as the clients send them.
    ("oof-en-exchange.eml", "", "auto_reply"),
    ("oof-en-suppress-only.eml", "jane.miller@corp.example.com", "auto_reply"),
    ("oof-en-subject-only-nullsender.eml", "", "auto_reply"),
    ("oof-fr-outlook.eml", "", "auto_reply"),
    ("oof-de-gmail-vacation.eml", "", "auto_reply"),
    ("oof-de-notes-subject-only.eml", "petra.schmidt@firma.example.de", "auto_reply"),
    ("oof-es-outlook.eml", "", "auto_reply"),
    ("oof-it-zimbra.eml", "giulia.rossi@azienda.example.it", "auto_reply"),
    ("oof-it-subject-only.eml", "marco.bianchi@azienda.example.it", "auto_reply"),
    ("oof-nl-outlook.eml", "", "auto_reply"),
    ("oof-nl-subject-only.eml", "bram.visser@bedrijf.example.nl", "auto_reply"),
    # People.
    ("person-office-move.eml", ALICE, "post"),
    ("person-out-of-office-hours.eml", "bob.carter@corp.example.com", "post"),
    ("person-replies-to-autoreply.eml", "bob.carter@corp.example.com", "post"),
    ("bounce-forwarded-by-person.eml", ALICE, "post"),
    ("list-traffic-other-list.eml", "dev-bounces+rd=lists.example.net@other.example.org", "post"),
    ("ham-with-spam-headers.eml", "dave@corp.example.com", "post"),
    # Upstream spam verdicts.
    ("spam-flagged.eml", "promo@bulk.example.biz", "spam"),
    ("spam-status-only.eml", "offers@bulk.example.biz", "spam"),
    # Loops.
    ("loop-own-header.eml", "bounces+abcdefghijklmnop@lists.example.net", "loop"),
    ("loop-list-id.eml", ALICE, "loop"),
    ("loop-from-reply-address.eml", "someone@home.example.org", "loop"),
    # Reports.
    ("bounce-postfix-userunknown.eml", "", "bounce"),
    ("bounce-exim-mailboxfull.eml", "", "bounce"),
    ("bounce-exchange-spam.eml", "", "bounce"),
    ("bounce-delayed.eml", "", "bounce"),
    ("feedback-arf.eml", "", "feedback"),
    ("read-receipt.eml", "erin@corp.example.com", "auto_reply"),
]


@POLICIES
@pytest.mark.parametrize(("name", "envelope", "kind"), CASES, ids=[c[0] for c in CASES])
def test_fixture_kind(name: str, envelope: str, kind: str, pol: Policy) -> None:
    verdict = classify(load(name, pol), envelope, CONFIG)
    assert verdict.kind == kind, verdict.reason
    assert verdict.reason


def test_every_fixture_is_covered() -> None:
    named = {case[0] for case in CASES}
    assert {p.name for p in FIXTURES.glob("*.eml")} == named


# --- bounces --------------------------------------------------------------------------------


@POLICIES
def test_postfix_user_unknown_is_a_hard_bounce(pol: Policy) -> None:
    verdict = classify(load("bounce-postfix-userunknown.eml", pol), "", CONFIG)
    assert verdict.bounce == BounceInfo(
        "former.employee@customer.example.com", "5.1.1", True, "userunknown"
    )


def test_exim_bounce_with_auto_submitted_is_a_bounce_not_an_auto_reply() -> None:
    msg = load("bounce-exim-mailboxfull.eml")
    assert msg["Auto-Submitted"] == "auto-replied"
    verdict = classify(msg, "", CONFIG)
    assert verdict.kind == "bounce"
    assert verdict.bounce == BounceInfo("hans@provider.example.de", "5.2.2", False, "mailboxfull")


def test_spam_rejection_is_soft_with_its_own_reason() -> None:
    infos = parse_dsn(load("bounce-exchange-spam.eml"))
    assert infos == [BounceInfo("kim@client.example.com", "5.7.1", False, "spam")]


def test_delayed_dsn_is_soft() -> None:
    infos = parse_dsn(load("bounce-delayed.eml"))
    assert [(i.status, i.hard) for i in infos] == [("4.4.1", False)]


def test_parse_dsn_several_recipients_in_one_block() -> None:
    # Some MTAs run the recipient groups together without the blank line.
    raw = (
        "From: MAILER-DAEMON@mx.example.org\nTo: bounces+x@lists.example.net\n"
        "Subject: Undeliverable\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nFailed.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; one@example.com\nAction: failed\nStatus: 5.2.2\n"
        "Final-Recipient: rfc822; two@example.com\nAction: failed\nStatus: 5.1.1\n"
        "--b--\n"
    )
    infos = parse_dsn(email.message_from_string(raw))
    assert [(i.recipient, i.reason, i.hard) for i in infos] == [
        ("one@example.com", "mailboxfull", False),
        ("two@example.com", "userunknown", True),
    ]


@pytest.mark.parametrize("name", ["oof-en-subject-only-nullsender.eml", "oof-de-gmail-vacation.eml",
                                  "person-office-move.eml"])
def test_parse_dsn_finds_nothing_in_an_auto_reply(name: str) -> None:
    # What an autoresponder sends to our bounces+ address names addresses that did not bounce.
    assert parse_dsn(load(name)) == []
    assert parse_dsn(load(name), "") == []


def test_status_5_0_0_is_refined_by_the_diagnostic() -> None:
    assert best_status("5.0.0", "smtp; 550 5.1.1 <x@example.com>... User unknown") == "5.1.1"
    assert best_status("4.4.7", "554 4.4.7 expired <421 4.4.2 Connection timed out>") == "4.4.2"
    assert best_status("", "550 Requested action not taken") == "5.0.0"
    assert best_status("5.0.0", "250 2.1.5 Ok then 550 5.7.1 denied") == "5.7.1"


@pytest.mark.parametrize(
    ("status", "text", "reason", "hard"),
    [
        ("5.1.1", "", "userunknown", True),
        ("5.1.2", "", "hostunknown", True),
        ("5.1.10", "", "notaccept", True),
        ("5.2.1", "", "suspend", True),
        ("5.1.6", "", "hasmoved", True),
        ("5.2.2", "", "mailboxfull", False),
        ("5.4.7", "", "expired", False),
        ("4.4.7", "", "expired", False),
        ("5.7.1", "Message rejected as spam", "spam", False),
        ("5.7.1", "Unknown user", "policy", False),  # a filter's refusal never kills
        ("5.7.26", "DMARC policy", "policy", False),
        ("5.0.0", "User unknown", "userunknown", True),
        ("4.0.0", "User unknown", "userunknown", False),  # temporary: not dead
        ("5.0.0", "Mailbox is full", "mailboxfull", False),
        ("", "", "other", False),
        ("2.1.5", "", "delivered", False),
    ],
)
def test_reason_for(status: str, text: str, reason: str, hard: bool) -> None:
    assert reason_for(status, text) == (reason, hard)


def test_a_person_saying_undeliverable_is_a_post() -> None:
    msg = build({**PERSON, "Subject": "Undeliverable: who has Paul's new address?"},
                "paul@lyon.example.fr: bounced twice\n")
    assert classify(msg, ALICE, CONFIG).kind == "post"


def test_daemon_notice_without_report_is_an_auto_reply() -> None:
    msg = build({**PERSON, "From": "MAILER-DAEMON@mx.example.org", "Subject": "Notice"},
                "Your mailbox quota will be reviewed.\n")
    verdict = classify(msg, "", CONFIG)
    assert verdict.kind == "auto_reply"


def test_null_sender_plain_message_is_an_auto_reply() -> None:
    verdict = classify(build(PERSON), "", CONFIG)
    assert verdict == Verdict("auto_reply", verdict.reason)
    assert "null envelope sender" in verdict.reason


def test_forwarded_bounce_attachment_is_read() -> None:
    inner = load("bounce-postfix-userunknown.eml")
    outer = EmailMessage()
    outer["From"] = "MAILER-DAEMON@relay.example.org"
    outer["To"] = "bounces+x@lists.example.net"
    outer["Subject"] = "Returned mail: see attachment"
    outer.set_content("The following addresses had permanent delivery errors\n")
    outer.add_attachment(inner)
    infos = parse_dsn(outer)
    assert [i.recipient for i in infos] == ["former.employee@customer.example.com"]


def test_returned_message_recipient_is_the_last_resort() -> None:
    # Apache James style: the text never names the failed address.
    report = EmailMessage()
    report["From"] = "postmaster@mobile.example.com"
    report["To"] = "bounces+x@lists.example.net"
    report["Subject"] = "Delivery failure"
    report.set_content("Error: Invalid user address\n550 - Requested action not taken\n")
    original = EmailMessage()
    original["From"] = "rd@lists.example.net"
    original["To"] = "5551234@mobile.example.com"
    original.set_content("Hi\n")
    report.add_attachment(original)
    verdict = classify(report, "", CONFIG)
    assert verdict.bounce == BounceInfo("5551234@mobile.example.com", "5.0.0", True, "userunknown")


def test_ses_bounce_and_complaint_notifications() -> None:
    def sns(event: dict[str, object]) -> Message:
        msg = EmailMessage()
        msg["From"] = "no-reply@sns.amazonaws.com"
        msg["To"] = "ops@lists.example.net"
        msg["Subject"] = "AWS Notification Message"
        msg["x-amz-sns-message-id"] = "ad6bdf42-f483-5bae-bf50-8fc1aad3f981"
        msg.set_content(json.dumps(event) + "\n\n--\nUnsubscribe: https://sns.example/\n")
        return msg

    bounce = sns({"notificationType": "Bounce", "bounce": {
        "bounceType": "Permanent", "bouncedRecipients": [
            {"emailAddress": "gone@example.com", "action": "failed", "status": "5.1.1",
             "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}})
    verdict = classify(bounce, "sender@amazonses.example", CONFIG)
    assert verdict.kind == "bounce"
    assert verdict.bounce == BounceInfo("gone@example.com", "5.1.1", True, "userunknown")
    complaint = sns({"notificationType": "Complaint", "complaint": {
        "complainedRecipients": [{"emailAddress": "angry@example.com"}],
        "complaintFeedbackType": "abuse"}})
    verdict = classify(complaint, "sender@amazonses.example", CONFIG)
    assert verdict.kind == "feedback"
    assert verdict.bounce is not None and verdict.bounce.recipient == "angry@example.com"


def test_arf_report_recipient_and_type() -> None:
    report = parse_feedback(load("feedback-arf.eml"))
    assert report is not None
    assert report.feedback_type == "abuse"
    assert [i.recipient for i in report.infos] == ["grumpy@provider.example"]
    # The processor asks parse_dsn for the details of every report, feedback included.
    assert parse_dsn(load("feedback-arf.eml")) == list(report.infos)


# --- auto-replies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Budget", "Automatic reply: Budget", "Auto-Reply: Budget",
        "Autoreply", "[Auto-Reply] Budget", "Réponse automatique : Budget",
        "Réponse automatique\u00a0: Budget", "Absence du bureau", "Absent du bureau: Budget",
        "Abwesenheitsnotiz: Budget", "Automatische Antwort: Budget",
        "Respuesta automática: Presupuesto", "Fuera de la oficina", "Risposta automatica: X",
        "Fuori sede: X", "Afwezig", "Afwezig: X", "Automatisch antwoord: Offerte",
        "OUT OF OFFICE", "Out of Office AutoReply: Budget",
    ],
)
def test_oof_subject_at_start(subject: str) -> None:
    assert oof_subject_start(subject)


@pytest.mark.parametrize(
    "subject",
    [
        "Office move", "New office in Lyon", "Out of office hours support rota",
        "Re: Automatic reply: Budget", "Absent - tomorrow", "Absentee ballot",
        "Automatically generated reports", "Afwezigheid van Jan volgende week",
        "Office 365 migration", "Back in the office",
    ],
)
def test_person_subjects_are_not_oof(subject: str) -> None:
    assert not oof_subject_start(subject)
    msg = build({**PERSON, "Subject": subject})
    assert classify(msg, ALICE, CONFIG).kind == "post"


def test_oof_marker_inside_subject_needs_a_second_sign() -> None:
    subject = "Jane is out of the office this week"
    assert oof_subject_anywhere(subject)
    assert classify(build({**PERSON, "Subject": subject}), ALICE, CONFIG).kind == "post"
    suppressed = build({**PERSON, "Subject": subject, "X-Auto-Response-Suppress": "All"})
    assert classify(suppressed, ALICE, CONFIG).kind == "auto_reply"


def test_auto_submitted_no_is_a_person_even_with_an_oof_subject() -> None:
    msg = build({**PERSON, "Subject": "Out of office: team lunch plans", "Auto-Submitted": "no"})
    assert classify(msg, ALICE, CONFIG).kind == "post"


@pytest.mark.parametrize(
    ("header", "value", "kind"),
    [
        ("Auto-Submitted", "auto-generated", "auto_reply"),
        ("Auto-Submitted", "auto-replied (vacation)", "auto_reply"),
        ("Auto-Submitted", "auto-notified; owner-email=x@example.com", "auto_reply"),
        ("Auto-Submitted", "No", "post"),
        ("X-Autoreply", "yes", "auto_reply"),
        ("X-Autorespond", "Vacation", "auto_reply"),
        ("X-Autoresponder", "", "auto_reply"),
        ("X-Autoreply", "no", "post"),
        ("Precedence", "bulk", "auto_reply"),
        ("Precedence", "junk", "auto_reply"),
        ("Precedence", "auto_reply", "auto_reply"),
        ("Precedence", "list", "post"),
        ("X-Auto-Response-Suppress", "All", "post"),  # alone it proves nothing
    ],
)
def test_auto_reply_headers(header: str, value: str, kind: str) -> None:
    msg = build({**PERSON, header: value})
    assert classify(msg, ALICE, CONFIG).kind == kind


def test_list_server_notice_is_automatic() -> None:
    msg = build({**PERSON, "From": "dev-request@other.example.org",
                 "Subject": "You are not a member", "List-Id": "<dev.other.example.org>"})
    assert classify(msg, "dev-request@other.example.org", CONFIG).kind == "auto_reply"


# --- loops and spam -------------------------------------------------------------------------


def test_loop_header_needs_our_instance_name() -> None:
    other = build({**PERSON, "X-Causerie-Loop": "another-instance"})
    assert classify(other, ALICE, CONFIG).kind == "post"
    ours = build({**PERSON, "X-Causerie-Loop": "Causerie-Test"})
    assert classify(ours, ALICE, CONFIG).kind == "loop"
    assert classify(ours, ALICE, ClassifierConfig()).kind == "post"


@pytest.mark.parametrize(
    ("sender", "kind"),
    [
        ("rd@lists.example.net", "loop"),  # a community's posting address
        ("private+abcdefghijklmnop@lists.example.net", "loop"),
        ("bounces+abcdefghijklmnop@LISTS.example.net", "loop"),
        ("postmaster@lists.example.net", "auto_reply"),  # not a loop; a mail-system address
        ("reply+abc@elsewhere.example.org", "post"),
    ],
)
def test_loop_from_our_addresses(sender: str, kind: str) -> None:
    msg = build({**PERSON, "From": f"Someone <{sender}>"})
    assert classify(msg, ALICE, CONFIG).kind == kind


def test_loop_from_our_verp_envelope() -> None:
    verdict = classify(build(PERSON), "bounces+abcdefghijklmnop@lists.example.net", CONFIG)
    assert verdict.kind == "loop"


def test_spam_beats_bounce_and_loop_beats_spam() -> None:
    bounce = load("bounce-postfix-userunknown.eml")
    bounce["X-Spam-Flag"] = "YES"
    assert classify(bounce, "", CONFIG).kind == "spam"
    bounce["X-Causerie-Loop"] = "causerie-test"
    assert classify(bounce, "", CONFIG).kind == "loop"


def test_rules_are_named_functions_in_a_fixed_order() -> None:
    names = [rule.__name__ for rule in RULES]
    assert names[:6] == ["rule_loop_header", "rule_loop_list_id", "rule_loop_own_address",
                         "rule_upstream_spam", "rule_feedback", "rule_bounce"]
    assert len(set(names)) == len(names)


def test_verdict_is_deterministic() -> None:
    msg = load("bounce-exim-mailboxfull.eml")
    assert classify(msg, "", CONFIG) == classify(msg, "", CONFIG)


# --- speed ----------------------------------------------------------------------------------
