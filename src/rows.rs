//! Whole rows the API inserts, every value computed by the function itself. They are written
//! below the executor, as logical replication's apply worker writes a replicated row
//! (`ExecSimpleRelationInsert`: the heap tuple, its NOT NULL checks and its index entries). A
//! one-row INSERT through SPI would also revalidate a plan and start and end an executor for it.

use crate::cache::Relations;
use crate::db::Statement;
use crate::internals;
use crate::schema::{AUDIT_TYPES, SESSION_TYPES};
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys;
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
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
    };
}

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
        &AUDIT_TYPES,
    ),
};

/// `now()`, as SQL would see it: the transaction's start.
pub fn now() -> TimestampWithTimeZone {
    // SAFETY: reads the current transaction's start time.
    TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
        .expect("the transaction start is a finite time")
}

impl Table {
    /// Inserts `row`: one value per column, in column order. Below the executor only where it
    /// would do nothing more than store the row ([`direct_write`]) and the table has exactly
    /// these columns; otherwise through the executor, which also fills the defaults of columns
    /// someone added. Refused in a read-only transaction with 25006, as the executor refuses an
    /// INSERT.
    pub fn insert(&'static self, client: &SpiClient<'_>, row: &[DatumWithOid<'_>]) {
        let oid =
            (self.relation)(&crate::cache::locked(|r| [((self.relation)(r), pg_sys::RowExclusiveLock)]));
        // SAFETY: the table is locked as INSERT locks it (to the end of the transaction), its
        // first columns have the row's types (`cache::locked` checks the shape), and it is
        // closed before returning; every executor object made here lives in the executor
        // state's memory, freed before returning. Errors unwind as PostgreSQL's.
        unsafe {
            let relation = pg_sys::table_open(oid, pg_sys::NoLock as _);
            let desc = (*relation).rd_att;
            if !direct_write(relation, pg_sys::ACL_INSERT) || (*desc).natts as usize != row.len() {
                pg_sys::table_close(relation, pg_sys::NoLock as _);
                self.by_executor.count(client, row);
                return;
            }
            pg_sys::PreventCommandIfReadOnly(c"INSERT".as_ptr());
            pg_sys::PreventCommandIfParallelMode(c"INSERT".as_ptr());
            as_result_relation(relation, &[], |info, estate| {
                let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
                for (i, value) in row.iter().enumerate() {
                    let datum = value.datum();
                    *(*slot).tts_isnull.add(i) = datum.is_none();
                    *(*slot).tts_values.add(i) = datum.map_or(pg_sys::Datum::from(0), |d| d.sans_lifetime());
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                pg_sys::ExecSimpleRelationInsert(info, estate, slot);
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            });
            pg_sys::table_close(relation, pg_sys::NoLock as _);
        }
    }
}

/// Runs `write` with `relation` as the one result relation of a fresh executor state, its
/// indexes open, as logical replication's apply worker sets one up
/// (`create_edata_for_relation`); every executor object lives in the state's memory, freed
/// before returning. `updated` names the columns an update sets (none for an insert).
///
/// The write runs code someone attached to the table when [`evaluates_attached_code`] says so:
/// then it runs under the API call's pinned search_path, and each index's expressions and
/// predicate are read again from the catalog, not taken from this backend's relation cache, where
/// SQL functions in them were inlined under whatever search_path the caller had when the cache
/// entry was built (a query of its own on the table is enough). PostgreSQL plans them when it
/// first evaluates them (`ExecPrepareExpr`), under the pinned path.
///
/// # Safety
/// `relation` is open and locked as the write needs (RowExclusiveLock); `write` may call
/// PostgreSQL (errors unwind as PostgreSQL's).
pub unsafe fn as_result_relation(
    relation: pg_sys::Relation,
    updated: &[usize],
    write: impl FnOnce(*mut pg_sys::ResultRelInfo, *mut pg_sys::EState),
) {
    // SAFETY: the caller's contract.
    unsafe {
        let attached = evaluates_attached_code(relation);
        if attached {
            crate::definer::pin_search_path();
        }
        let estate = pg_sys::CreateExecutorState();
        // An error here aborts the (sub)transaction, and PostgreSQL's abort restores the
        // current memory context, as after any error.
        PgMemoryContexts::For((*estate).es_query_cxt).switch_to(|_| {
            let mut rte = PgBox::<pg_sys::RangeTblEntry>::alloc_node(pg_sys::NodeTag::T_RangeTblEntry);
            rte.rtekind = pg_sys::RTEKind::RTE_RELATION;
            rte.relid = (*(*relation).rd_rel).oid;
            rte.relkind = pg_sys::RELKIND_RELATION as _;
            rte.rellockmode = pg_sys::RowExclusiveLock as _;
            internals::init_range_table(estate, rte.into_pg(), updated);
            let info = PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo).into_pg();
            pg_sys::InitResultRelInfo(info, relation, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(info, false);
            if attached {
                reread_index_expressions(info);
            }
            write(info, estate);
            pg_sys::ExecCloseIndices(info);
        });
        pg_sys::FreeExecutorState(estate);
    }
}

/// Whether writing a row of `relation` below the executor makes PostgreSQL run code that someone
/// attached to the table: a CHECK constraint, a generated column, an index on an expression or
/// with a predicate, or an index whose operator classes are not built in (their support functions
/// compare the keys). Such code resolves unqualified names through search_path, and here it runs
/// with the extension owner's rights. The one place that decides it, for every direct write.
///
/// # Safety
/// `relation` is open.
pub unsafe fn evaluates_attached_code(relation: pg_sys::Relation) -> bool {
    // SAFETY: the caller's contract; catalog reads, each tuple released before the next.
    unsafe {
        let constraints = (*(*relation).rd_att).constr;
        if !constraints.is_null()
            && ((*constraints).num_check > 0 || internals::has_generated_columns(constraints))
        {
            return true;
        }
        let indexes = pg_sys::RelationGetIndexList(relation);
        let attached =
            (0..pg_sys::list_length(indexes)).any(|i| index_evaluates_code(pg_sys::list_nth_oid(indexes, i)));
        pg_sys::list_free(indexes);
        attached
    }
}

/// Whether index `index` evaluates code of anyone's on an insert: expressions, a predicate, or an
/// operator class created after initdb (a built-in one has built-in support functions).
///
/// # Safety
/// Inside a transaction.
unsafe fn index_evaluates_code(index: pg_sys::Oid) -> bool {
    // SAFETY: the caller's contract; the tuple is released before returning, the class vector
    // read while it is held.
    unsafe {
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::INDEXRELID as _, pg_sys::Datum::from(index));
        if tuple.is_null() {
            return true;
        }
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_index>(tuple);
        let has = |attribute: u32| !pg_sys::heap_attisnull(tuple, attribute as _, std::ptr::null_mut());
        let mut null = false;
        let classes = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::INDEXRELID as _,
            tuple,
            pg_sys::Anum_pg_index_indclass as _,
            &mut null,
        );
        let classes = classes.cast_mut_ptr::<pg_sys::oidvector>();
        let foreign_class = null
            || (*classes)
                .values
                .as_slice(form.indnkeyatts as usize)
                .iter()
                .any(|class| class.to_u32() >= pg_sys::FirstNormalObjectId);
        let evaluates =
            has(pg_sys::Anum_pg_index_indexprs) || has(pg_sys::Anum_pg_index_indpred) || foreign_class;
        pg_sys::ReleaseSysCache(tuple);
        evaluates
    }
}

/// Replaces the expressions and predicates the executor state's indexes were opened with (from
/// this backend's relation cache) by the catalog's own, to be planned when first evaluated.
///
/// # Safety
/// `info` is a result relation whose indexes `ExecOpenIndices` opened, in the executor state's
/// memory context.
unsafe fn reread_index_expressions(info: *mut pg_sys::ResultRelInfo) {
    // SAFETY: the caller's contract; each catalog tuple is released before the next, and the
    // node trees are allocated in the current (executor) memory context.
    unsafe {
        for i in 0..(*info).ri_NumIndices as usize {
            let index = *(*info).ri_IndexRelationDescs.add(i);
            let index_info = *(*info).ri_IndexRelationInfo.add(i);
            let tuple = pg_sys::SearchSysCache1(
                pg_sys::SysCacheIdentifier::INDEXRELID as _,
                pg_sys::Datum::from((*(*index).rd_rel).oid),
            );
            if tuple.is_null() {
                continue;
            }
            let tree = |attribute: u32| {
                let mut null = false;
                let text = pg_sys::SysCacheGetAttr(
                    pg_sys::SysCacheIdentifier::INDEXRELID as _,
                    tuple,
                    attribute as _,
                    &mut null,
                );
                (!null).then(|| pg_sys::stringToNode(pg_sys::text_to_cstring(text.cast_mut_ptr())))
            };
            if let Some(expressions) = tree(pg_sys::Anum_pg_index_indexprs) {
                (*index_info).ii_Expressions = expressions.cast();
                (*index_info).ii_ExpressionsState = std::ptr::null_mut();
            }
            if let Some(predicate) = tree(pg_sys::Anum_pg_index_indpred) {
                (*index_info).ii_Predicate = pg_sys::make_ands_implicit(predicate.cast());
                (*index_info).ii_PredicateState = std::ptr::null_mut();
            }
            pg_sys::ReleaseSysCache(tuple);
        }
    }
}

/// Whether a write of kind `privilege` (`ACL_INSERT`, `ACL_DELETE`) to `relation` may be made
/// below the executor: only when the executor would do nothing more than make it. That is, when
/// the current user holds the privilege on the whole table (the executor's own check, which
/// also accepts column privileges, then decides), and the executor would not run triggers or
/// rules someone added (a cascading foreign key, an audit trigger), nor apply row-level
/// security, which binds the extension's owner only when it is neither a superuser nor
/// BYPASSRLS.
///
/// # Safety
/// `relation` is open.
pub unsafe fn direct_write(relation: pg_sys::Relation, privilege: u32) -> bool {
    // SAFETY: the caller's contract; the checks read the catalogs.
    unsafe {
        let form = &*(*relation).rd_rel;
        !form.relhastriggers
            && !form.relhasrules
            && pg_sys::pg_class_aclcheck(form.oid, pg_sys::GetUserId(), privilege as _)
                == pg_sys::AclResult::ACLCHECK_OK
            && pg_sys::check_enable_rls(form.oid, pg_sys::InvalidOid, true)
                != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

/// Whether an UPDATE of `relation` may be made below the executor with `heap_update`: as
/// [`direct_write`], and only where the executor would check nothing on the new row version
/// (no CHECK constraint, no stored generated column, not a partition) and the table is a heap.
///
/// # Safety
/// `relation` is open.
pub unsafe fn direct_update(relation: pg_sys::Relation) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        let constraints = (*(*relation).rd_att).constr;
        let form = &*(*relation).rd_rel;
        direct_write(relation, pg_sys::ACL_UPDATE)
            && (constraints.is_null()
                || ((*constraints).num_check == 0 && !internals::has_generated_columns(constraints)))
            && !form.relispartition
            && form.relam == pg_sys::HEAP_TABLE_AM_OID
    }
}

/// Raises "permission denied for table" (42501) unless the current user may read every column
/// of `table`, as the executor checks a query that reads them all.
pub fn require_select(table: pg_sys::Oid) {
    // SAFETY: catalog reads inside a transaction; the error is PostgreSQL's own.
    unsafe {
        let user = pg_sys::GetUserId();
        let select = pg_sys::ACL_SELECT as pg_sys::AclMode;
        if pg_sys::pg_class_aclcheck(table, user, select) != pg_sys::AclResult::ACLCHECK_OK
            && pg_sys::pg_attribute_aclcheck_all(table, user, select, pg_sys::AclMaskHow::ACLMASK_ALL)
                != pg_sys::AclResult::ACLCHECK_OK
        {
            pg_sys::aclcheck_error(
                pg_sys::AclResult::ACLCHECK_NO_PRIV,
                pg_sys::ObjectType::OBJECT_TABLE,
                pg_sys::get_rel_name(table),
            );
        }
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
             ALTER TABLE session_ext.user_sessions OWNER TO plain_owner;",
        )
        .unwrap();
        create(ALICE, "");
    }

    /// Makes a BYPASSRLS role that is no superuser the extension's owner (the owner of its
    /// table), then takes `privilege` on the table away from it: nothing but the privilege
    /// check would then stop a write below the executor.
    fn owner_without(privilege: &str) {
        Spi::run(&format!(
            "CREATE ROLE bypass_owner NOLOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA session_ext TO bypass_owner;
             GRANT ALL ON session_ext.session_audit_log, session_ext.session_audit_log_id_seq TO bypass_owner;
             ALTER TABLE session_ext.user_sessions OWNER TO bypass_owner;
             REVOKE {privilege} ON session_ext.user_sessions FROM bypass_owner;"
        ))
        .unwrap();
    }

    #[pg_test(error = "permission denied for table user_sessions")]
    fn an_owner_without_insert_creates_nothing() {
        owner_without("INSERT");
        create(ALICE, "");
    }

    #[pg_test(error = "permission denied for table user_sessions")]
    fn an_owner_without_delete_cleans_nothing() {
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = '{id}'"
        ))
        .unwrap();
        owner_without("DELETE");
        count("SELECT session_ext.cleanup_expired_sessions()");
    }

    #[pg_test(error = "permission denied for table user_sessions")]
    fn an_owner_without_select_validates_nothing() {
        let (_, token) = create(ALICE, "");
        owner_without("SELECT");
        Spi::run(&format!("SELECT session_ext.validate_session('{token}')")).unwrap();
    }

    /// Columns someone added to the tables (and dropped again) are no reason to fail: the rows
    /// then go through the executor, which fills the defaults.
    #[pg_test]
    fn columns_added_and_dropped_again_leave_creation_and_auditing_working() {
        let tables = ["session_ext.user_sessions", "session_ext.session_audit_log"];
        for table in tables {
            Spi::run(&format!("ALTER TABLE {table} ADD COLUMN note text DEFAULT 'added'")).unwrap();
        }
        let (id, _) = create(ALICE, "");
        let noted = format!(
            "SELECT count(*) FROM session_ext.user_sessions s JOIN session_ext.session_audit_log a
                 ON a.session_id = s.id AND a.event = 'create'
              WHERE s.id = '{id}' AND s.note = 'added' AND a.note = 'added'"
        );
        assert_eq!(count(&noted), 1);
        for table in tables {
            Spi::run(&format!("ALTER TABLE {table} DROP COLUMN note")).unwrap();
        }
        let (id, token) = create(ALICE, "");
        assert_eq!(
            count(&format!("SELECT count(*) FROM session_ext.session_audit_log WHERE session_id = '{id}'")),
            1
        );
        let validated = format!("SELECT (session_ext.validate_session('{token}')).id = '{id}'");
        assert_eq!(Spi::get_one::<bool>(&validated).unwrap(), Some(true));
    }
}
