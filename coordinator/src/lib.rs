//! The 2PC protocol as pure state machines (issue 3). Not built yet.
