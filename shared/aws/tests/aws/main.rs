//! Black-box tests of `aop-aws` against real servers: moto's server mode for Secrets Manager
//! (`AOP_TEST_MOTO=http://127.0.0.1:PORT`, started by `infra/aws/moto start PORT`) and a stub of
//! the one MSK call (see `msk.rs` for why). One binary keeps link times down.

mod msk;
mod secrets;
mod support;
