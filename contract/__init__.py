"""The contracts every layer leans on, owned by none of them.

`encoder/` and `services/` both import this package; it imports neither (import-linter
checks that, see `.importlinter`). What lives here changes only with the wire contracts in
`proto/persona/v1/` and `services/store/LAYOUT.md`:

- `events`: the Event record as Python sees it;
- `codec`: Kafka record value (protobuf or JSON) <-> Event, with validation;
- `record`: the stored event record (a version byte + the protobuf Event without its ids);
- `versions`: the model version id pattern;
- `updates`: the update-log record (`EmbeddingUpdate`) and its key;
- `topics`: the default topic names.
"""
