"""The nearline refresher: dirty users re-encoded into versioned vectors, published to the
update log; model version cutover (back-fill, atomic flip, rollback)."""
