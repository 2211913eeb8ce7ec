-- phase: adopt
-- point the view at embedding (text-embedding-3-small@1536:a13c439d64c8) [tx; ACCESS EXCLUSIVE on public.articles_search]
CREATE OR REPLACE VIEW "public"."articles_search" AS SELECT "id", "title", "body", "url", "updated_at", "embedding"::vector AS "embedding", 'text-embedding-3-small@1536:a13c439d64c8'::text AS "embedding_model" FROM "public"."articles";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'articles_search', 'articles-3large', 'embedding', 'text-embedding-3-small@1536:a13c439d64c8', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-3-small", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.articles_search');
-- phase: expand
-- create the side table public.articles_embedding_v2 for embedding_v2 (the table itself is not changed; the foreign key deletes a vector with its row) [tx; SHARE ROW EXCLUSIVE on public.articles]
CREATE TABLE IF NOT EXISTS "public"."articles_embedding_v2" ("id" bigint PRIMARY KEY REFERENCES "public"."articles" ("id") ON DELETE CASCADE ON UPDATE CASCADE, "embedding_v2" vector(1024) NOT NULL);
-- change capture: clear stale new vectors, queue changed rows, record stale old ones [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_articles_3large_3ed041da_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''articles-3large'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."title" IS DISTINCT FROM OLD."title" OR NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."articles_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF NEW."embedding" IS NOT NULL AND (text_changed = (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text)) THEN
      INSERT INTO migrator.stale_sources (migration, pk, reason) VALUES (''articles-3large'', NEW."id"::text, CASE WHEN text_changed THEN ''text changed, old vector not rewritten'' ELSE ''old vector written without its text'' END)
      ON CONFLICT (migration, pk) DO UPDATE SET reason = EXCLUDED.reason, detected_at = now(), batched_at = NULL, refreshed_at = NULL;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''articles-3large'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- attach the change-capture trigger [tx; SHARE ROW EXCLUSIVE on public.articles]
CREATE OR REPLACE TRIGGER "migrator_articles_3large_3ed041da_capture" BEFORE INSERT OR UPDATE OF "title", "body", "embedding" ON "public"."articles" FOR EACH ROW EXECUTE FUNCTION "migrator"."migrator_articles_3large_3ed041da_capture_fn"();
-- phase: expand (backward)
DROP TRIGGER IF EXISTS "migrator_articles_3large_3ed041da_capture" ON "public"."articles";
DROP FUNCTION IF EXISTS "migrator"."migrator_articles_3large_3ed041da_capture_fn"();
DROP TABLE IF EXISTS "public"."articles_embedding_v2";
-- phase: backfill
-- workers: read a batch's current text and its hash [tx; ACCESS SHARE on public.articles]
SELECT "id", "id"::text, CASE WHEN (btrim(coalesce("title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("body"::text, ''), E' \t\r\n') <> '') THEN concat("title"::text, '

', "body"::text) END, md5(CASE WHEN (btrim(coalesce("title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("body"::text, ''), E' \t\r\n') <> '') THEN concat("title"::text, '

', "body"::text) END) FROM "public"."articles" WHERE "id" > %(lo)s AND "id" <= %(hi)s AND NOT EXISTS (SELECT 1 FROM "public"."articles_embedding_v2" AS s WHERE s."id" = "public"."articles"."id") ORDER BY 1;
-- workers: staging table for a binary COPY of the vectors [tx; no table lock]
CREATE TEMP TABLE IF NOT EXISTS "migrator_stage_428fda_vector_1024" (pk bigint, text_hash text, v vector(1024)) ON COMMIT DELETE ROWS;
-- workers: compare-and-set write (only rows whose text is unchanged) [tx; ROW EXCLUSIVE on public.articles_embedding_v2]
WITH ok AS (SELECT s.pk, s.v FROM "migrator_stage_428fda_vector_1024" AS s JOIN "public"."articles" AS t ON t."id" = s.pk WHERE md5(CASE WHEN (btrim(coalesce("t"."title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("t"."body"::text, ''), E' \t\r\n') <> '') THEN concat("t"."title"::text, '

', "t"."body"::text) END) = s.text_hash AND s.v IS NOT NULL FOR SHARE OF t) INSERT INTO "public"."articles_embedding_v2" ("id", "embedding_v2") SELECT pk, v FROM ok ON CONFLICT ("id") DO NOTHING RETURNING "id"::text;
-- workers, source role: read rows whose embedding is NULL or recorded stale [tx; ACCESS SHARE on public.articles]
SELECT t."id", t."id"::text, CASE WHEN (btrim(coalesce("t"."title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("t"."body"::text, ''), E' \t\r\n') <> '') THEN concat("t"."title"::text, '

', "t"."body"::text) END, md5(CASE WHEN (btrim(coalesce("t"."title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("t"."body"::text, ''), E' \t\r\n') <> '') THEN concat("t"."title"::text, '

', "t"."body"::text) END) FROM "public"."articles" AS t WHERE t."id" = ANY(%(ids)s::text[]::bigint[]) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'articles-3large' AND st.pk = "t"."id"::text AND st.refreshed_at IS NULL)) ORDER BY 1;
-- workers, source role: compare-and-set write of embedding with text-embedding-3-small [tx; ROW EXCLUSIVE on public.articles]
UPDATE "public"."articles" AS t SET "embedding" = s.v FROM "migrator_stage_428fda_vector_1536" AS s WHERE t."id" = s.pk AND md5(CASE WHEN (btrim(coalesce("t"."title"::text, ''), E' \t\r\n') <> '' OR btrim(coalesce("t"."body"::text, ''), E' \t\r\n') <> '') THEN concat("t"."title"::text, '

', "t"."body"::text) END) IS NOT DISTINCT FROM s.text_hash AND NOT (t."embedding" IS NULL AND s.v IS NULL) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'articles-3large' AND st.pk = "t"."id"::text AND st.refreshed_at IS NULL)) RETURNING t."id"::text;
-- phase: index
-- set the side table's visibility map and statistics before the build [no-tx; SHARE UPDATE EXCLUSIVE on public.articles_embedding_v2]
VACUUM (ANALYZE) "public"."articles_embedding_v2";
-- memory for the index build (session setting) [no-tx; no table lock]
SET maintenance_work_mem = '16GB';
-- parallel workers for the build (session setting) [no-tx; no table lock]
SET max_parallel_maintenance_workers = 2;
-- build articles_embedding_v2_hnsw_idx without blocking writes [no-tx; SHARE UPDATE EXCLUSIVE on public.articles_embedding_v2]
CREATE INDEX CONCURRENTLY IF NOT EXISTS "articles_embedding_v2_hnsw_idx" ON "public"."articles_embedding_v2" USING hnsw ("embedding_v2" vector_cosine_ops) WITH (m = 16, ef_construction = 64);
-- phase: index (backward)
DROP INDEX CONCURRENTLY IF EXISTS "public"."articles_embedding_v2_hnsw_idx";
-- phase: cutover
-- point the view at embedding_v2 (text-embedding-3-large@1024:6cfd44e2de8c) [tx; ACCESS EXCLUSIVE on public.articles_search]
CREATE OR REPLACE VIEW "public"."articles_search" AS SELECT "id", "title", "body", "url", "updated_at", "migrator_side"."embedding_v2"::vector AS "embedding", 'text-embedding-3-large@1024:6cfd44e2de8c'::text AS "embedding_model" FROM "public"."articles" JOIN "public"."articles_embedding_v2" AS "migrator_side" USING ("id");
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'articles_search', 'articles-3large', 'embedding_v2', 'text-embedding-3-large@1024:6cfd44e2de8c', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1024, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-3-large", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 1024, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.articles_search');
-- change capture now also keeps embedding fresh (for rollback) instead of recording its stale vectors [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_articles_3large_3ed041da_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''articles-3large'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."title" IS DISTINCT FROM OLD."title" OR NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."articles_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding" IS NULL OR TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''articles-3large'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: cutover (backward)
CREATE OR REPLACE VIEW "public"."articles_search" AS SELECT "id", "title", "body", "url", "updated_at", "embedding"::vector AS "embedding", 'text-embedding-3-small@1536:a13c439d64c8'::text AS "embedding_model" FROM "public"."articles";
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'articles_search', 'articles-3large', 'embedding', 'text-embedding-3-small@1536:a13c439d64c8', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-3-small", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.articles_search');
-- phase: rollback
-- point the view at embedding (text-embedding-3-small@1536:a13c439d64c8) [tx; ACCESS EXCLUSIVE on public.articles_search]
CREATE OR REPLACE VIEW "public"."articles_search" AS SELECT "id", "title", "body", "url", "updated_at", "embedding"::vector AS "embedding", 'text-embedding-3-small@1536:a13c439d64c8'::text AS "embedding_model" FROM "public"."articles";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'articles_search', 'articles-3large', 'embedding', 'text-embedding-3-small@1536:a13c439d64c8', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-3-small", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.articles_search');
-- phase: rollback (backward)
CREATE OR REPLACE VIEW "public"."articles_search" AS SELECT "id", "title", "body", "url", "updated_at", "migrator_side"."embedding_v2"::vector AS "embedding", 'text-embedding-3-large@1024:6cfd44e2de8c'::text AS "embedding_model" FROM "public"."articles" JOIN "public"."articles_embedding_v2" AS "migrator_side" USING ("id");
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'articles_search', 'articles-3large', 'embedding_v2', 'text-embedding-3-large@1024:6cfd44e2de8c', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1024, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-3-large", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 1024, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.articles_search');
CREATE OR REPLACE FUNCTION "migrator"."migrator_articles_3large_3ed041da_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''articles-3large'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."title" IS DISTINCT FROM OLD."title" OR NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."articles_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding" IS NULL OR TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''articles-3large'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: finalize
-- record the phase finalizing (rollback refused from here) [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalizing', updated_at = now() WHERE name = 'articles-3large';
-- detach the change-capture trigger [new tx; ACCESS EXCLUSIVE on public.articles]
DROP TRIGGER IF EXISTS "migrator_articles_3large_3ed041da_capture" ON "public"."articles";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_articles_3large_3ed041da_capture_fn"();
-- drop embedding (irreversible) [tx; ACCESS EXCLUSIVE on public.articles]
ALTER TABLE "public"."articles" DROP COLUMN IF EXISTS "embedding";
-- record the phase finalized [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalized', updated_at = now() WHERE name = 'articles-3large';
-- phase: abort
-- detach the change-capture trigger [tx; ACCESS EXCLUSIVE on public.articles]
DROP TRIGGER IF EXISTS "migrator_articles_3large_3ed041da_capture" ON "public"."articles";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_articles_3large_3ed041da_capture_fn"();
-- drop public.articles_embedding_v2 and its index (the new vectors are discarded) [tx; ACCESS EXCLUSIVE on public.articles_embedding_v2]
DROP TABLE IF EXISTS "public"."articles_embedding_v2";
-- drop the view adopt created [tx; ACCESS EXCLUSIVE on public.articles_search]
DROP VIEW IF EXISTS "public"."articles_search";
-- remove the view's registry entry (adopt created it) [tx; ROW EXCLUSIVE on migrator.active_models]
DELETE FROM migrator.active_models WHERE view_schema = 'public' AND view_name = 'articles_search' AND migration = 'articles-3large';
-- announce the change (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.articles_search');
-- record the phase aborted [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'aborted', updated_at = now() WHERE name = 'articles-3large';
-- delete this migration's rows of migrator.changes [new tx; ROW EXCLUSIVE on migrator.changes]
DELETE FROM "migrator"."changes" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.batches [tx; ROW EXCLUSIVE on migrator.batches]
DELETE FROM "migrator"."batches" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.dead_letters [tx; ROW EXCLUSIVE on migrator.dead_letters]
DELETE FROM "migrator"."dead_letters" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.reports [tx; ROW EXCLUSIVE on migrator.reports]
DELETE FROM "migrator"."reports" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.stale_sources [tx; ROW EXCLUSIVE on migrator.stale_sources]
DELETE FROM "migrator"."stale_sources" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.bridges [tx; ROW EXCLUSIVE on migrator.bridges]
DELETE FROM "migrator"."bridges" WHERE migration = 'articles-3large';
-- delete this migration's rows of migrator.pacing [tx; ROW EXCLUSIVE on migrator.pacing]
DELETE FROM "migrator"."pacing" WHERE migration = 'articles-3large';
