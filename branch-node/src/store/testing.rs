//! `coordinator::testing::Fixture` for the SQLite store and its writer, so both run the
//! coordinator's Shard conformance suite (feature `testing`, tests only).

use std::sync::OnceLock;

use coordinator::testing::Fixture;
use wire::teller::{NewCustomer, TransferState};
use wire::{AccountNumber, Amount, TransferId};

use super::writer::WriterHandle;
use super::{Movement, Store, hash_password};

/// The keys of the folder `path` is in, made there when missing (see
/// `keys::unlock_or_make`).
pub fn folder_keys(path: &std::path::Path, me: wire::BranchId) -> crate::keys::DataKeys {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    crate::keys::unlock_or_make(dir, me)
        .unwrap_or_else(|e| panic!("keys of {}: {e}", dir.display()))
}

/// `Store::open` under [`folder_keys`].
pub fn open_keyed(
    path: &std::path::Path,
    me: wire::BranchId,
    durability: super::Durability,
) -> Result<Store, super::StoreError> {
    Store::open(path, &folder_keys(path, me), me, durability)
}

/// `Store::open_existing` under [`folder_keys`].
pub fn open_existing_keyed(
    path: &std::path::Path,
    me: wire::BranchId,
    durability: super::Durability,
) -> Result<Store, super::StoreError> {
    Store::open_existing(path, &folder_keys(path, me), me, durability)
}

/// A raw connection to the store file `path` under its folder's keys (tests that look
/// at or change rows directly); a folder without keys gets branch 1's.
pub fn raw(path: &std::path::Path) -> rusqlite::Connection {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    if !dir.join(crate::keys::KEYS_FILE).is_file() {
        folder_keys(path, wire::BranchId(1));
    }
    super::connect_in_dir(path, rusqlite::OpenFlags::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// One argon2 hash (of "secret") shared by every test account: hashing costs ~30 ms.
pub fn shared_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("secret").unwrap_or_default())
}

fn customer_for(number: AccountNumber) -> NewCustomer {
    NewCustomer {
        national_id: format!("N{}", number.serial()),
        phone: "+91 98765 43210".into(),
        first_name: "Test".into(),
        last_name: "Customer".into(),
        sms_opt_in: false,
    }
}

/// A deposit id that cannot clash with the small ids tests choose.
fn funding_id(number: AccountNumber) -> TransferId {
    TransferId(u128::MAX - u128::from(number.serial()))
}

fn amount(minor: i64) -> Amount {
    Amount::from_minor(minor).expect("fixture amounts are non-negative")
}

/// `Store` and `WriterHandle` have the same account methods; one impl serves both.
macro_rules! fixture_for {
    ($t:ty) => {
        impl Fixture for $t {
            fn open_account(&mut self, number: AccountNumber, minor: i64) {
                let view = <$t>::open_account(self, &customer_for(number), shared_hash(), None);
                assert_eq!(
                    view.expect("store works").expect("opens").number,
                    number,
                    "accounts open in order"
                );
                if minor > 0 {
                    let state =
                        self.movement(Movement::Deposit, funding_id(number), number, amount(minor));
                    assert_eq!(state.expect("store works"), TransferState::Committed);
                }
            }
            fn close_account(&mut self, number: AccountNumber) {
                <$t>::close_account(self, number)
                    .expect("store works")
                    .expect("closes");
            }
            fn balance_and_held(&self, number: AccountNumber) -> (i64, i64) {
                let view = self.account(number).expect("store works");
                view.map_or((-1, -1), |v| (v.balance.minor(), v.held.minor()))
            }
        }
    };
}

fixture_for!(Store);
fixture_for!(WriterHandle);

/// The store's own connection (its settings, for a test that checks them).
pub fn conn(store: &super::Store) -> &rusqlite::Connection {
    store.conn()
}
