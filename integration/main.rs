//! End-to-end tests: each test starts its own `vivace serve` process on free
//! loopback ports with a private temp dir (see `harness`).

mod amplification;
mod auth;
mod bad_input;
mod compaction;
mod crash_loop;
mod disk_full;
mod durability;
mod faults;
mod generator;
mod harness;
mod ingest;
mod kafka;
mod kafka_outage;
mod limits;
mod metrics;
mod model;
mod process;
mod s3_server;
mod scale;
mod scale_auth;
mod scale_compactors;
mod scale_limits;
mod scale_restart;
mod scale_takeover;
mod scale_visibility;
mod search;
mod service;
mod storage;
mod tenants;
mod tools;
mod vulture;
mod wal_hardening;
