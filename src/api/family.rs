//! Token families (SPEC §4 `rotate_session_token`): what a presented token that is no session's
//! current one is. Every token a session ever had belongs to its family: the roots, remembered
//! by hash in `root_token_hashes`, and the rotated tokens, which name their session and
//! generation under a MAC of the session's key (`crate::token`). Presenting an earlier token is
//! reuse, with one exception, the grace window: for `session_ext.rotation_grace` after a
//! rotation, the token it replaced still stands for the token it was rotated to, so that tabs
//! and retries that raced the rotation converge on one token.

use super::{active, lookup, Subject};
use crate::db::{Columns, Statement, BYTEA, INTERVAL, UUID};
use crate::settings;
use crate::token::{self, TokenHash};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

/// One session of session_ext.user_sessions, with what recognising its tokens needs.
macro_rules! family_of {
    ($where:literal) => {
        concat!(
            "SELECT s.id, s.user_id, s.ip_address, s.session_id, s.expires_at, ",
            active!(),
            ", s.rotated_at + $2 > pg_catalog.now(), s.token_hash, s.token_key, s.token_generation
               FROM session_ext.user_sessions s WHERE ",
            $where
        )
    };
}

static FAMILY_BY_ID: Statement = Statement::new(family_of!("s.id = $1"), &[UUID, INTERVAL]);
// A client may have given its own token to a session again after the session that first had it
// ended; the live one is the one it stands for.
static FAMILY_BY_ROOT: Statement = Statement::new(
    family_of!("s.root_token_hashes @> ARRAY[$1] ORDER BY 6 DESC, s.rotated_at DESC LIMIT 1"),
    &[BYTEA, INTERVAL],
);

/// The session a presented token belongs to.
pub struct Member {
    pub subject: Subject,
    pub session_id: String,
    pub expires_at: TimestampWithTimeZone,
    /// Not revoked (nor about to be, for a reuse found before), not expired.
    pub active: bool,
}

/// What a token that is no session's current one is.
pub enum Presented {
    /// No token of any family.
    Unknown,
    /// The token the last rotation replaced, presented within the grace window: it stands for
    /// `current`, the token it was rotated to.
    Replaced { member: Member, current: String },
    /// An earlier token of the session's family: reuse.
    Earlier(Member),
}

/// The family row of a session, read out of SPI.
struct Family {
    member: Member,
    within_grace: bool,
    token_hash: Vec<u8>,
    key: Vec<u8>,
    generation: u64,
}

/// Recognises `token` (whose SHA-256 is `hash`), which is no session's current token.
pub fn recognize(client: &SpiClient<'_>, token: &str, hash: &TokenHash) -> Presented {
    let grace = settings::rotation_grace();
    let rotated = token::parse(token).and_then(|claimed| {
        let id = Uuid::from_bytes(claimed.session);
        let family = FAMILY_BY_ID.one(client, &[id.into(), grace.into()]).map(|row| read(&row))?;
        (claimed.authentic(&family.key) && claimed.generation < family.generation).then_some(family)
    });
    // A token of the rotated shape that is no rotated token may still be a client's own root.
    let family = rotated.or_else(|| {
        FAMILY_BY_ROOT.one(client, &[hash.as_slice().into(), grace.into()]).map(|row| read(&row))
    });
    let Some(family) = family else {
        return Presented::Unknown;
    };
    if family.member.active && family.within_grace && settings::ROTATION_GRACE.get() > 0 {
        let id = family.member.subject.id;
        let next = token::derive(&family.key, id.as_bytes(), family.generation, token);
        if token::hash(&next).as_slice() == family.token_hash {
            return Presented::Replaced { member: family.member, current: next };
        }
    }
    Presented::Earlier(family.member)
}

fn read(row: &impl Columns) -> Family {
    let subject = Subject::from_row(row, 1);
    let active = row.col::<bool>(6) == Some(true) && !lookup::revoked_meanwhile(subject.id);
    Family {
        member: Member {
            subject,
            session_id: row.col(4).expect("session_id is NOT NULL"),
            expires_at: row.col(5).expect("expires_at is NOT NULL"),
            active,
        },
        within_grace: row.col::<bool>(7) == Some(true),
        token_hash: row.col(8).unwrap_or_default(),
        key: row.col(9).expect("token_key is NOT NULL"),
        generation: row.col::<i64>(10).map_or(0, |g| g as u64),
    }
}
