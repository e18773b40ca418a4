"""The KV store: the window store (`windows`) and the vector store (`vectors`) over one
router (`router`: every command to a node or a cluster) and one script loader (`scripts`);
key layouts in LAYOUT.md (`layout`, `records`); connecting (`client`)."""
