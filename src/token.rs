//! Bearer tokens: generation, hashing and the shape a client-supplied token must have.
//!
//! Only the SHA-256 of a token is ever stored or compared; the token itself is returned to
//! the caller once and never written anywhere.
//!
//! Token families (SPEC §4 `rotate_session_token`): a session's first token is random (or the
//! client's own); every rotation derives the next token from the one it replaces, with the
//! session's secret key, which never leaves the database:
//!
//! ```text
//! token = base64url(1 | session id (16) | generation (8, big-endian) | auth (16) | chain (32))
//! auth  = HMAC-SHA-256(key, "session_ext token auth" | session id | generation), first 16 bytes
//! chain = HMAC-SHA-256(key, "session_ext token next" | session id | generation | parent token)
//! ```
//!
//! `auth` lets the database recognise any token of the family, however old, without storing it:
//! a presented token names its session and generation, and only the key's holder can make a
//! valid `auth` for them. `chain` makes the token depend on its parent: rotating the same parent
//! again yields the same token (the grace window's idempotence), while the key alone, as a copy
//! of the table holds it, computes no usable token — the parent is needed too, and the first
//! token of every family was never stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// 256 bits of entropy per generated token.
pub const TOKEN_BYTES: usize = 32;
pub const MIN_TOKEN_LEN: usize = 32;
pub const MAX_TOKEN_LEN: usize = 1024;

pub type TokenHash = [u8; 32];

/// A fresh token from the operating system's generator, URL-safe base64 without padding.
pub fn generate() -> Result<String, rand::rand_core::OsError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash(value: &str) -> TokenHash {
    Sha256::digest(value.as_bytes()).into()
}

/// A session's secret key: 256 bits from the operating system's generator.
pub fn new_key() -> Result<[u8; 32], rand::rand_core::OsError> {
    let mut key = [0u8; 32];
    OsRng.try_fill_bytes(&mut key)?;
    Ok(key)
}

const FORMAT: u8 = 1;
const AUTH_BYTES: usize = 16;
/// Bytes of a derived token before base64: format, session id, generation, auth, chain.
const DERIVED_BYTES: usize = 1 + 16 + 8 + AUTH_BYTES + 32;

/// What a derived token claims: its session and generation, with the MAC that proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    pub session: [u8; 16],
    pub generation: u64,
    auth: [u8; AUTH_BYTES],
}

fn mac(key: &[u8], label: &[u8], session: &[u8; 16], generation: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(label);
    mac.update(session);
    mac.update(&generation.to_be_bytes());
    mac
}

/// The token of `generation` for `session`, derived from `parent`, the token it replaces.
pub fn derive(key: &[u8], session: &[u8; 16], generation: u64, parent: &str) -> String {
    let auth = mac(key, b"session_ext token auth", session, generation).finalize().into_bytes();
    let mut chain = mac(key, b"session_ext token next", session, generation);
    chain.update(parent.as_bytes());
    let mut bytes = Vec::with_capacity(DERIVED_BYTES);
    bytes.push(FORMAT);
    bytes.extend_from_slice(session);
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.extend_from_slice(&auth[..AUTH_BYTES]);
    bytes.extend_from_slice(&chain.finalize().into_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The session and generation `token` claims, if it has the shape of a derived token (a
/// client's own token may have it too: [`Derived::authentic`] tells).
pub fn parse(token: &str) -> Option<Derived> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok().filter(|b| b.len() == DERIVED_BYTES && b[0] == FORMAT)?;
    Some(Derived {
        session: bytes[1..17].try_into().ok()?,
        generation: u64::from_be_bytes(bytes[17..25].try_into().ok()?),
        auth: bytes[25..25 + AUTH_BYTES].try_into().ok()?,
    })
}

impl Derived {
    /// Whether `key`, the claimed session's key, made this token's auth; compared in constant
    /// time.
    pub fn authentic(&self, key: &[u8]) -> bool {
        mac(key, b"session_ext token auth", &self.session, self.generation)
            .verify_truncated_left(&self.auth)
            .is_ok()
    }
}

/// A session's CSRF token (SPEC §4 "CSRF", the synchronizer token pattern), URL-safe base64:
///
/// ```text
/// csrf = HMAC-SHA-256(key, "session_ext csrf" | session id | 0 (8 bytes, big-endian))
/// ```
///
/// A function of the session's key and id only: the same for every token of the session (it
/// survives rotation), useless once the session has ended (the functions look the session up
/// first), and made only by the key's holder, the database.
pub fn csrf(key: &[u8], session: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, CSRF_LABEL, session, 0).finalize().into_bytes())
}

/// Whether `presented` is the session's [`csrf`] token, compared in constant time. Anything
/// else, malformed or not, is simply false.
pub fn csrf_matches(key: &[u8], session: &[u8; 16], presented: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(presented)
        .is_ok_and(|tag| mac(key, CSRF_LABEL, session, 0).verify_slice(&tag).is_ok())
}

// The MAC inputs are not length-prefixed: the labels stay apart because none is a prefix of
// another ("session_ext csrf", "session_ext token auth", "session_ext token next"); a new label
// must keep it so.
const CSRF_LABEL: &[u8] = b"session_ext csrf";

/// Why a client-supplied token is refused, phrased to follow the argument's name.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenProblem {
    TooShort(usize),
    TooLong(usize),
    BadCharacter,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(n) => {
                write!(f, "has {n} characters, fewer than the minimum of {MIN_TOKEN_LEN}")
            }
            Self::TooLong(n) => write!(f, "has {n} characters, more than the maximum of {MAX_TOKEN_LEN}"),
            Self::BadCharacter => {
                write!(f, "contains a character outside visible ASCII (whitespace or control)")
            }
        }
    }
}

/// Tokens are opaque, but must be 32..=1024 visible ASCII characters: whitespace or a control
/// character in a token is always a client bug (a stray "Bearer " prefix, a newline).
pub fn check(token: &str) -> Result<(), TokenProblem> {
    match token.chars().count() {
        n if n < MIN_TOKEN_LEN => Err(TokenProblem::TooShort(n)),
        n if n > MAX_TOKEN_LEN => Err(TokenProblem::TooLong(n)),
        _ if !token.bytes().all(|b| b.is_ascii_graphic()) => Err(TokenProblem::BadCharacter),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_url_safe_characters_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_eq!(check(&a), Ok(()));
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = hash("abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn length_bounds_are_inclusive() {
        assert_eq!(check(&"a".repeat(31)), Err(TokenProblem::TooShort(31)));
        assert_eq!(check(&"a".repeat(32)), Ok(()));
        assert_eq!(check(&"a".repeat(1024)), Ok(()));
        assert_eq!(check(&"a".repeat(1025)), Err(TokenProblem::TooLong(1025)));
    }

    proptest::proptest! {
        /// `check` is exactly its documented rule, for any text at all.
        #[test]
        fn check_accepts_exactly_32_to_1024_visible_ascii_characters(token in "(?s).{0,1100}") {
            let chars = token.chars().count();
            let visible = token.bytes().all(|b| b.is_ascii_graphic());
            let accepted = check(&token).is_ok();
            proptest::prop_assert_eq!(accepted, (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&chars) && visible);
        }

        /// A refusal never carries the token: its message is the same for every token of a length.
        #[test]
        fn a_refusal_says_nothing_of_the_token(token in "(?s).{0,1100}") {
            if let Err(problem) = check(&token) {
                let message = problem.to_string();
                proptest::prop_assert!(message.len() < 80);
                let start: String = token.chars().take(8).collect();
                proptest::prop_assert!(start.chars().count() < 8 || !message.contains(&start));
            }
        }

        /// Distinct tokens have distinct hashes, and a hash is a pure function of its token.
        #[test]
        fn hashing_is_deterministic_and_separates_tokens(a in "[ -~]{32,64}", b in "[ -~]{32,64}") {
            proptest::prop_assert_eq!(hash(&a), hash(&a));
            proptest::prop_assert_eq!(hash(&a) == hash(&b), a == b);
        }
    }

    #[test]
    fn generated_tokens_always_pass_the_client_token_rules() {
        for _ in 0..1000 {
            let token = generate().unwrap();
            assert_eq!(check(&token), Ok(()));
            assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), TOKEN_BYTES);
        }
    }

    const KEY: [u8; 32] = [7; 32];
    const SESSION: [u8; 16] = [9; 16];

    #[test]
    fn a_derived_token_names_its_session_and_generation_and_passes_the_client_token_rules() {
        let token = derive(&KEY, &SESSION, 3, "parent-token-of-at-least-32-characters");
        assert_eq!(token.len(), 98);
        assert_eq!(check(&token), Ok(()));
        let derived = parse(&token).unwrap();
        assert_eq!((derived.session, derived.generation), (SESSION, 3));
        assert!(derived.authentic(&KEY));
        assert!(!derived.authentic(&[8; 32]), "another session's key");
    }

    #[test]
    fn derivation_is_a_function_of_key_session_generation_and_parent() {
        let parent = "p".repeat(43);
        let token = derive(&KEY, &SESSION, 1, &parent);
        assert_eq!(token, derive(&KEY, &SESSION, 1, &parent), "the same parent, the same token");
        for other in [
            derive(&[8; 32], &SESSION, 1, &parent),
            derive(&KEY, &[10; 16], 1, &parent),
            derive(&KEY, &SESSION, 2, &parent),
            derive(&KEY, &SESSION, 1, &"q".repeat(43)),
        ] {
            assert_ne!(token, other);
        }
    }

    #[test]
    fn a_forged_or_altered_token_is_not_authentic() {
        let token = derive(&KEY, &SESSION, 5, &"p".repeat(43));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[24] ^= 1; // generation 4, auth of 5
        assert!(!parse(&URL_SAFE_NO_PAD.encode(&bytes)).unwrap().authentic(&KEY));
        assert_eq!(parse(&generate().unwrap()), None, "a random token is not derived");
        assert_eq!(parse(&token[..97]), None);
        assert_eq!(parse(&"A".repeat(98)), None, "format byte 0");
    }

    #[test]
    fn a_csrf_token_is_bound_to_key_and_session_and_nothing_else_matches() {
        let (key, other_key) = (new_key().unwrap(), new_key().unwrap());
        let (session, other_session) = ([7u8; 16], [8u8; 16]);
        let csrf_token = csrf(&key, &session);
        assert_eq!(csrf_token, csrf(&key, &session));
        assert_eq!(csrf_token.len(), 43);
        assert!(csrf_matches(&key, &session, &csrf_token));
        assert!(!csrf_matches(&other_key, &session, &csrf_token));
        assert!(!csrf_matches(&key, &other_session, &csrf_token));
        // Not the token auth of any generation either: the label separates them.
        assert_ne!(
            csrf_token,
            URL_SAFE_NO_PAD.encode(mac(&key, b"session_ext token auth", &session, 0).finalize().into_bytes())
        );
        for wrong in
            ["", "not base64!", &csrf_token[..42], &format!("{csrf_token}A"), &csrf(&key, &other_session)]
        {
            assert!(!csrf_matches(&key, &session, wrong), "{wrong:?} matched");
        }
    }

    #[test]
    fn whitespace_and_non_ascii_are_refused() {
        assert_eq!(check(&format!("Bearer {}", "a".repeat(40))), Err(TokenProblem::BadCharacter));
        assert_eq!(check(&format!("{}\n", "a".repeat(40))), Err(TokenProblem::BadCharacter));
        assert_eq!(check(&"é".repeat(40)), Err(TokenProblem::BadCharacter));
        assert_eq!(check(""), Err(TokenProblem::TooShort(0)));
        assert_eq!(check(&" ".repeat(2000)), Err(TokenProblem::TooLong(2000)));
    }
}
