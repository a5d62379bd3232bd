//! The layout of session_ext's tables and result types as `sql/schema.sql` declares them: the
//! attribute numbers and types the code that bypasses SQL reads and writes by, held to the
//! catalog by a test, and checked again against the live catalog whenever it is read
//! (`cache::relations`), since anyone who owns the objects can alter them.

use pgrx::pg_sys::{BuiltinOid, PgOid};

const UUID: PgOid = PgOid::BuiltIn(BuiltinOid::UUIDOID);
const TEXT: PgOid = PgOid::BuiltIn(BuiltinOid::TEXTOID);
const BYTEA: PgOid = PgOid::BuiltIn(BuiltinOid::BYTEAOID);
const BYTEA_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::BYTEAARRAYOID);
const JSONB: PgOid = PgOid::BuiltIn(BuiltinOid::JSONBOID);
const INET: PgOid = PgOid::BuiltIn(BuiltinOid::INETOID);
const INTERVAL: PgOid = PgOid::BuiltIn(BuiltinOid::INTERVALOID);
const INT8: PgOid = PgOid::BuiltIn(BuiltinOid::INT8OID);
const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(BuiltinOid::TIMESTAMPTZOID);

/// The types of the columns of `session_ext.user_sessions`, in column order.
pub static SESSION_TYPES: [PgOid; 24] = [
    UUID,
    UUID,
    TEXT,
    BYTEA,
    BYTEA_ARRAY,
    TIMESTAMPTZ,
    JSONB,
    INT8,
    TEXT,
    TEXT,
    INET,
    BYTEA,
    TIMESTAMPTZ,
    TIMESTAMPTZ,
    TIMESTAMPTZ,
    INTERVAL,
    TIMESTAMPTZ,
    TIMESTAMPTZ,
    TEXT,
    BYTEA,
    INT8,
    TEXT,
    TIMESTAMPTZ,
    TIMESTAMPTZ,
];

/// The types of the columns of `session_ext.session_audit_log`, in column order.
pub static AUDIT_TYPES: [PgOid; 9] = [INT8, TIMESTAMPTZ, TEXT, UUID, UUID, TEXT, UUID, INET, JSONB];

/// The types of the fields of `session_ext.new_session` (id, session_id, token, expires_at).
pub static NEW_SESSION_TYPES: [PgOid; 4] = [UUID, TEXT, TEXT, TIMESTAMPTZ];

/// `occurred_at` of `session_ext.session_audit_log`.
pub const AUDIT_OCCURRED_AT: usize = 2;

/// Attribute numbers of `session_ext.user_sessions`, in the order of sql/schema.sql (a test
/// holds them to the catalog).
pub mod column {
    pub const ID: usize = 1;
    pub const USER_ID: usize = 2;
    pub const SESSION_ID: usize = 3;
    pub const TOKEN_HASH: usize = 4;
    pub const SESSION_DATA: usize = 7;
    pub const DATA_VERSION: usize = 8;
    pub const DEVICE_INFO: usize = 9;
    pub const USER_AGENT: usize = 10;
    pub const IP_ADDRESS: usize = 11;
    pub const FINGERPRINT_HASH: usize = 12;
    pub const CREATED_AT: usize = 13;
    pub const LAST_ACTIVE_AT: usize = 14;
    pub const EXPIRES_AT: usize = 15;
    pub const IDLE_TIMEOUT: usize = 16;
    pub const VALID_UNTIL: usize = 17;
    pub const REVOKED_AT: usize = 18;
    pub const REVOKE_REASON: usize = 19;
    pub const TOKEN_KEY: usize = 20;
    pub const TOKEN_GENERATION: usize = 21;
    pub const AAL: usize = 22;
    pub const AAL_EXPIRES_AT: usize = 23;
    pub const CLEANUP_AFTER: usize = 24;
}

/// The columns of `session_ext.session_info`, in its order, as columns of the table. Its `aal`
/// and `aal_expires_at` are the level in force: `aal1` and NULL once a raised level has lapsed.
pub const SESSION_INFO: [usize; 17] = [
    column::ID,
    column::SESSION_ID,
    column::USER_ID,
    column::SESSION_DATA,
    column::DATA_VERSION,
    column::DEVICE_INFO,
    column::USER_AGENT,
    column::IP_ADDRESS,
    column::CREATED_AT,
    column::LAST_ACTIVE_AT,
    column::EXPIRES_AT,
    column::IDLE_TIMEOUT,
    column::VALID_UNTIL,
    column::REVOKED_AT,
    column::REVOKE_REASON,
    column::AAL,
    column::AAL_EXPIRES_AT,
];

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{column, SESSION_INFO};
    use pgrx::prelude::*;

    #[pg_test]
    fn column_numbers_match_the_table() {
        let named = [
            ("id", column::ID),
            ("user_id", column::USER_ID),
            ("session_id", column::SESSION_ID),
            ("token_hash", column::TOKEN_HASH),
            ("session_data", column::SESSION_DATA),
            ("data_version", column::DATA_VERSION),
            ("device_info", column::DEVICE_INFO),
            ("user_agent", column::USER_AGENT),
            ("ip_address", column::IP_ADDRESS),
            ("fingerprint_hash", column::FINGERPRINT_HASH),
            ("created_at", column::CREATED_AT),
            ("last_active_at", column::LAST_ACTIVE_AT),
            ("expires_at", column::EXPIRES_AT),
            ("idle_timeout", column::IDLE_TIMEOUT),
            ("valid_until", column::VALID_UNTIL),
            ("revoked_at", column::REVOKED_AT),
            ("revoke_reason", column::REVOKE_REASON),
            ("token_key", column::TOKEN_KEY),
            ("token_generation", column::TOKEN_GENERATION),
            ("aal", column::AAL),
            ("aal_expires_at", column::AAL_EXPIRES_AT),
            ("cleanup_after", column::CLEANUP_AFTER),
        ];
        for (name, number) in named {
            let attnum = Spi::get_one::<i16>(&format!(
                "SELECT attnum FROM pg_attribute WHERE attrelid = 'session_ext.user_sessions'::regclass AND attname = '{name}'"
            ))
            .unwrap();
            assert_eq!(attnum, Some(number as i16), "{name}");
        }
        // session_info lists the table's columns in its own order and with the same types.
        let mismatched = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_attribute i
               JOIN unnest(ARRAY{:?}) WITH ORDINALITY AS m(table_attnum, info_attnum) ON m.info_attnum = i.attnum
               JOIN pg_attribute t ON t.attrelid = 'session_ext.user_sessions'::regclass AND t.attnum = m.table_attnum
              WHERE i.attrelid = 'session_ext.session_info'::regclass
                AND (i.attname <> t.attname OR i.atttypid <> t.atttypid)",
            SESSION_INFO
        ))
        .unwrap();
        assert_eq!(mismatched, Some(0));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'session_ext.session_info'::regclass AND attnum > 0")
                .unwrap(),
            Some(SESSION_INFO.len() as i64)
        );
    }
}
