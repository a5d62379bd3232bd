//! Whole rows the API inserts, every value computed by the function itself. They are written
//! below the executor, as logical replication's apply worker writes a replicated row
//! (`ExecSimpleRelationInsert`: the heap tuple, its NOT NULL checks and its index entries). A
//! one-row INSERT through SPI would also revalidate a plan and start and end an executor for it.

use crate::cache::Relations;
use crate::db::{Statement, BYTEA, INET, INT8, INTERVAL, JSONB, TEXT, TIMESTAMPTZ, UUID};
use crate::internals;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::SpiClient;
use pgrx::{PgBox, PgMemoryContexts};

/// A table and the statement that inserts one whole row of it through the executor.
pub struct Table {
    relation: fn(&Relations) -> pg_sys::Oid,
    /// `INSERT ... VALUES ($1, ...)`, one parameter per column, in column order, each of the
    /// column's type.
    pub by_executor: Statement,
}

/// The columns of `session_ext.user_sessions` from `INSERT INTO` on.
macro_rules! insert_session {
    () => {
        "INSERT INTO session_ext.user_sessions VALUES
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
    };
}

static SESSION_TYPES: [PgOid; 19] = [
    UUID,
    UUID,
    TEXT,
    BYTEA,
    BYTEA,
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
];

pub static SESSIONS: Table =
    Table { relation: |r| r.table, by_executor: Statement::new(insert_session!(), &SESSION_TYPES) };

/// A session row whose session id or token the caller chose: inserted through the executor,
/// unless either is taken already, when nothing is inserted.
pub static SESSION_UNLESS_TAKEN: Statement =
    Statement::new(concat!(insert_session!(), " ON CONFLICT DO NOTHING"), &SESSION_TYPES);

/// The audit log; the caller supplies `id` from its identity sequence.
pub static AUDIT_LOG: Table = Table {
    relation: |r| r.audit_table,
    by_executor: Statement::new(
        "INSERT INTO session_ext.session_audit_log OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[INT8, TIMESTAMPTZ, TEXT, UUID, UUID, TEXT, UUID, INET, JSONB],
    ),
};

/// `now()`, as SQL would see it: the transaction's start.
pub fn now() -> TimestampWithTimeZone {
    // SAFETY: reads the current transaction's start time.
    TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
        .expect("the transaction start is a finite time")
}

impl Table {
    /// Inserts `row`: one value per column, in column order. Where the executor would do more
    /// than store the row ([`executor_only`]), the row goes through it. Refused in a read-only
    /// transaction with 25006, as the executor refuses an INSERT.
    pub fn insert(&'static self, client: &SpiClient<'_>, row: &[DatumWithOid<'_>]) {
        let oid = (self.relation)(&crate::cache::relations());
        // SAFETY: the table is opened with the lock INSERT takes (kept to the end of the
        // transaction) and closed before returning; every executor object made here lives in
        // the executor state's memory, freed before returning. Errors unwind as PostgreSQL's.
        unsafe {
            let relation = pg_sys::table_open(oid, pg_sys::RowExclusiveLock as _);
            if executor_only(relation) {
                pg_sys::table_close(relation, pg_sys::NoLock as _);
                self.by_executor.count(client, row);
                return;
            }
            pg_sys::PreventCommandIfReadOnly(c"INSERT".as_ptr());
            pg_sys::PreventCommandIfParallelMode(c"INSERT".as_ptr());
            let desc = (*relation).rd_att;
            let columns = internals::attribute_types(desc);
            assert!(
                columns.len() == row.len() && columns.iter().zip(row).all(|(c, v)| *c == v.oid()),
                "one value per column of {oid:?}, of the column's type"
            );
            let estate = pg_sys::CreateExecutorState();
            // An error here aborts the (sub)transaction, and PostgreSQL's abort restores the
            // current memory context, as after any error.
            PgMemoryContexts::For((*estate).es_query_cxt).switch_to(|_| {
                let mut rte = PgBox::<pg_sys::RangeTblEntry>::alloc_node(pg_sys::NodeTag::T_RangeTblEntry);
                rte.rtekind = pg_sys::RTEKind::RTE_RELATION;
                rte.relid = oid;
                rte.relkind = pg_sys::RELKIND_RELATION as _;
                rte.rellockmode = pg_sys::RowExclusiveLock as _;
                internals::init_range_table(estate, rte.into_pg());
                let info =
                    PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo).into_pg();
                pg_sys::InitResultRelInfo(info, relation, 1, std::ptr::null_mut(), 0);
                pg_sys::ExecOpenIndices(info, false);
                let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
                for (i, value) in row.iter().enumerate() {
                    let datum = value.datum();
                    *(*slot).tts_isnull.add(i) = datum.is_none();
                    *(*slot).tts_values.add(i) = datum.map_or(pg_sys::Datum::from(0), |d| d.sans_lifetime());
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                pg_sys::ExecSimpleRelationInsert(info, estate, slot);
                pg_sys::ExecDropSingleTupleTableSlot(slot);
                pg_sys::ExecCloseIndices(info);
            });
            pg_sys::FreeExecutorState(estate);
            pg_sys::table_close(relation, pg_sys::NoLock as _);
        }
    }
}

/// Whether writing to `relation` must go through the executor, because it would do more than
/// store the row: run triggers or rules someone added (a cascading foreign key, an audit
/// trigger), or apply row-level security, which binds the functions' owner only when it is
/// neither a superuser nor BYPASSRLS.
///
/// # Safety
/// `relation` is open.
pub unsafe fn executor_only(relation: pg_sys::Relation) -> bool {
    // SAFETY: the caller's contract; check_enable_rls reads the catalogs.
    unsafe {
        let form = &*(*relation).rd_rel;
        form.relhastriggers
            || form.relhasrules
            || pg_sys::check_enable_rls(form.oid, pg_sys::InvalidOid, true)
                == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{Table, AUDIT_LOG, SESSIONS};
    use crate::testing::{count, create, ALICE};
    use pgrx::prelude::*;

    /// The rows have the tables' shape: one value per column, in order, of the column's type.
    /// (Which value goes to which column, the tests of the functions that write them check.)
    #[pg_test]
    fn row_types_match_the_tables() {
        let tables: [(&str, &Table); 2] =
            [("session_ext.user_sessions", &SESSIONS), ("session_ext.session_audit_log", &AUDIT_LOG)];
        for (name, table) in tables {
            let layout: Vec<i64> =
                table.by_executor.args.iter().map(|oid| i64::from(oid.value().to_u32())).collect();
            let catalog = Spi::get_one::<Vec<i64>>(&format!(
                "SELECT array_agg(atttypid::int8 ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = '{name}'::regclass AND attnum > 0"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(catalog, layout, "{name}");
        }
    }

    #[pg_test(error = "cannot execute INSERT in a read-only transaction")]
    fn a_read_only_transaction_cannot_create() {
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        create(ALICE, "");
    }

    #[pg_test]
    fn tables_with_triggers_get_their_rows_through_the_executor() {
        Spi::run(
            "CREATE TABLE public.seen (tab text, id text);
             CREATE FUNCTION public.see() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.seen VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER see AFTER INSERT ON session_ext.user_sessions
               FOR EACH ROW EXECUTE FUNCTION public.see();
             CREATE TRIGGER see AFTER INSERT ON session_ext.session_audit_log
               FOR EACH ROW EXECUTE FUNCTION public.see();",
        )
        .unwrap();
        let (id, _) = create(ALICE, ", ip_address => '192.0.2.1'");
        let seen = format!(
            "SELECT count(*) FROM public.seen p
               JOIN session_ext.user_sessions s ON p.tab = 'user_sessions' AND p.id = s.id::text
               JOIN session_ext.session_audit_log a ON a.session_id = s.id
              WHERE s.id = '{id}' AND a.event = 'create' AND a.ip_address = '192.0.2.1'
                AND EXISTS (SELECT FROM public.seen q WHERE q.tab = 'session_audit_log' AND q.id = a.id::text)"
        );
        assert_eq!(count(&seen), 1);
    }

    #[pg_test]
    fn audit_rows_take_their_ids_from_the_identity_sequence() {
        create(ALICE, "");
        create(ALICE, "");
        // Rows written directly and rows written by SQL share one sequence.
        Spi::run(
            "INSERT INTO session_ext.session_audit_log (event, actor_role) VALUES ('by_sql', current_user)",
        )
        .unwrap();
        create(ALICE, "");
        let ids = Spi::get_one::<String>(
            "SELECT string_agg(event, ',' ORDER BY id) FROM session_ext.session_audit_log",
        )
        .unwrap();
        assert_eq!(ids.as_deref(), Some("create,create,by_sql,create"));
        assert_eq!(count("SELECT count(*) FROM session_ext.session_audit_log WHERE occurred_at = now()"), 4);
    }

    /// Row-level security binds an owner that is neither a superuser nor BYPASSRLS: then the
    /// executor writes the row, and refuses it, as there is no write policy.
    #[pg_test(error = "new row violates row-level security policy for table \"user_sessions\"")]
    fn row_level_security_that_binds_the_owner_is_applied() {
        Spi::run(
            "CREATE ROLE plain_owner NOLOGIN;
             GRANT USAGE ON SCHEMA session_ext TO plain_owner;
             GRANT INSERT ON session_ext.user_sessions TO plain_owner;
             ALTER FUNCTION session_ext.create_user_session(uuid, json, interval, interval, text, text, inet, text)
               OWNER TO plain_owner;",
        )
        .unwrap();
        create(ALICE, "");
    }
}
