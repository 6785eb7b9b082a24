//! restart (filled in below).
