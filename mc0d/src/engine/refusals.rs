//! How the engine refuses a message: malformed, unauthorized, from an
//! impostor, or breaking the identity and role rules.

use std::time::Instant;

use mc0::log::Level;
use mc0::protocol::{self, Command, Limits, ProtocolError, ACCESS_DENIED, IMPOSTOR};

use super::acl::Denial;
use super::transport::Transport;
use super::{more_since, show, Engine, Sender};
use crate::config::IdentityCheck;
use crate::stats::RefusalReason;

impl<T: Transport> Engine<T> {
    pub(super) fn malformed(&mut self, rid: &[u8], error: &ProtocolError, id: Option<&[u8]>, now: Instant) {
        self.out.stats.refused.add(RefusalReason::Malformed, 1);
        if let Some(suppressed) = self.malformed_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!("malformed message from {}: {error}{}", show(rid), more_since(suppressed, "")),
            );
        }
        self.reply_error(rid, &error.to_string(), id, now);
    }

    /// The ID of a message that may be over the frame limit, for an ERROR.
    pub(super) fn lenient_id<'a, F: AsRef<[u8]>>(&self, rest: &'a [F]) -> Option<&'a [u8]> {
        let relaxed = Limits { max_frames: usize::MAX, ..self.limits };
        protocol::split(rest, &relaxed).ok().and_then(|env| Command::id_of(&env))
    }

    /// `"<z85> (<name>)"`, the key alone, or "none", for log lines.
    pub(super) fn describe(&self, key: Option<&str>) -> String {
        match (key, &self.allowlist) {
            (Some(k), Some(list)) => list.describe(k),
            (Some(k), None) => k.to_string(),
            (None, _) => "none".into(),
        }
    }

    /// Refuses a message whose connection has no authorized key.
    pub(super) fn deny<F: AsRef<[u8]>>(&mut self, rid: &[u8], rest: &[F], user: Option<&str>, now: Instant) {
        self.out.stats.refused.add(RefusalReason::AccessDenied, 1);
        let id = self.lenient_id(rest);
        if let Some(suppressed) = self.denied_warn.allow(now) {
            let key = match user {
                Some(k) => format!("key {k} is not authorized"),
                None => "no key was authorized for its connection (no ZAP User-Id)".into(),
            };
            self.out.log.log(
                Level::Warn,
                format_args!("refused a message from {}: {key}{}", show(rid), more_since(suppressed, "")),
            );
        }
        self.reply_error(rid, ACCESS_DENIED, id, now);
    }

    /// Refuses a message from the routing id of a session that belongs to
    /// another key; the session is left as it was.
    pub(super) fn impostor<F: AsRef<[u8]>>(
        &mut self,
        rid: &[u8],
        rest: &[F],
        user: Option<&str>,
        owner: Option<&str>,
        now: Instant,
    ) {
        self.out.stats.impostors += 1;
        self.out.stats.refused.add(RefusalReason::Impostor, 1);
        let id = self.lenient_id(rest);
        if let Some(suppressed) = self.impostor_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!(
                    "refused a message from {} under key {}: that routing id belongs to the live session of key {}; \
                     impostors={}{}",
                    show(rid),
                    self.describe(user),
                    self.describe(owner),
                    self.out.stats.impostors,
                    more_since(suppressed, "")
                ),
            );
        }
        self.reply_error(rid, IMPOSTOR, id, now);
    }

    /// Applies `--identity-check` to a rule's verdict on a command: a
    /// violation is counted and logged, and with `enforce` becomes the
    /// command's error.
    pub(super) fn judge(
        &mut self,
        rid: &[u8],
        sender: &Sender<'_>,
        what: &str,
        verdict: Result<(), Denial>,
        now: Instant,
    ) -> Result<(), String> {
        let Err(denial) = verdict else { return Ok(()) };
        self.out.stats.violations += 1;
        let enforce = self.identity_check == IdentityCheck::Enforce;
        if let Some(suppressed) = self.violation_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!(
                    "{} {what} from {} (key {}): {denial}; violations={}{}",
                    if enforce { "refused" } else { "allowed (--identity-check log)" },
                    show(rid),
                    self.describe(sender.key),
                    self.out.stats.violations,
                    more_since(suppressed, "")
                ),
            );
        }
        if enforce {
            self.out.stats.refused.add(RefusalReason::Identity, 1);
            Err(denial.0)
        } else {
            Ok(())
        }
    }
}
