-- phase: adopt
-- point the view at embedding (local-hash-old@256:971078742da6) [tx; ACCESS EXCLUSIVE on public.documents_search]
CREATE OR REPLACE VIEW "public"."documents_search" AS SELECT "id", "title", "body", "embedding"::vector AS "embedding", 'local-hash-old@256:971078742da6'::text AS "embedding_model" FROM "public"."documents";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'documents_search', 'demo-local', 'embedding', 'local-hash-old@256:971078742da6', '{"api_key_env": "MIGRATOR_LOCAL_KEY", "base_url": "http://127.0.0.1:8765/v1", "dimensions": 256, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "local-hash-old", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 256, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.documents_search');
-- phase: expand
-- create the side table public.documents_embedding_v2 for embedding_v2 (the table itself is not changed; the foreign key deletes a vector with its row) [tx; SHARE ROW EXCLUSIVE on public.documents]
CREATE TABLE IF NOT EXISTS "public"."documents_embedding_v2" ("id" bigint PRIMARY KEY REFERENCES "public"."documents" ("id") ON DELETE CASCADE ON UPDATE CASCADE, "embedding_v2" vector(384) NOT NULL);
-- change capture: clear stale new vectors, queue changed rows, record stale old ones [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_demo_local_68651ed9_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''demo-local'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."documents_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF NEW."embedding" IS NOT NULL AND (text_changed = (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text)) THEN
      INSERT INTO migrator.stale_sources (migration, pk, reason) VALUES (''demo-local'', NEW."id"::text, CASE WHEN text_changed THEN ''text changed, old vector not rewritten'' ELSE ''old vector written without its text'' END)
      ON CONFLICT (migration, pk) DO UPDATE SET reason = EXCLUDED.reason, detected_at = now(), batched_at = NULL, refreshed_at = NULL;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''demo-local'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- attach the change-capture trigger [tx; SHARE ROW EXCLUSIVE on public.documents]
CREATE OR REPLACE TRIGGER "migrator_demo_local_68651ed9_capture" BEFORE INSERT OR UPDATE OF "body", "embedding" ON "public"."documents" FOR EACH ROW EXECUTE FUNCTION "migrator"."migrator_demo_local_68651ed9_capture_fn"();
-- phase: expand (backward)
DROP TRIGGER IF EXISTS "migrator_demo_local_68651ed9_capture" ON "public"."documents";
DROP FUNCTION IF EXISTS "migrator"."migrator_demo_local_68651ed9_capture_fn"();
DROP TABLE IF EXISTS "public"."documents_embedding_v2";
-- phase: backfill
-- workers: read a batch's current text and its hash [tx; ACCESS SHARE on public.documents]
SELECT "id", "id"::text, "body", md5("body") FROM "public"."documents" WHERE "id" > %(lo)s AND "id" <= %(hi)s AND NOT EXISTS (SELECT 1 FROM "public"."documents_embedding_v2" AS s WHERE s."id" = "public"."documents"."id") ORDER BY 1;
-- workers: staging table for a binary COPY of the vectors [tx; no table lock]
CREATE TEMP TABLE IF NOT EXISTS "migrator_stage_428fda_vector_384" (pk bigint, text_hash text, v vector(384)) ON COMMIT DELETE ROWS;
-- workers: compare-and-set write (only rows whose text is unchanged) [tx; ROW EXCLUSIVE on public.documents_embedding_v2]
WITH ok AS (SELECT s.pk, s.v FROM "migrator_stage_428fda_vector_384" AS s JOIN "public"."documents" AS t ON t."id" = s.pk WHERE md5("t"."body") = s.text_hash AND s.v IS NOT NULL FOR SHARE OF t) INSERT INTO "public"."documents_embedding_v2" ("id", "embedding_v2") SELECT pk, v FROM ok ON CONFLICT ("id") DO NOTHING RETURNING "id"::text;
-- workers, source role: read rows whose embedding is NULL or recorded stale [tx; ACCESS SHARE on public.documents]
SELECT t."id", t."id"::text, "t"."body", md5("t"."body") FROM "public"."documents" AS t WHERE t."id" = ANY(%(ids)s::text[]::bigint[]) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'demo-local' AND st.pk = "t"."id"::text AND st.refreshed_at IS NULL)) ORDER BY 1;
-- workers, source role: compare-and-set write of embedding with local-hash-old [tx; ROW EXCLUSIVE on public.documents]
UPDATE "public"."documents" AS t SET "embedding" = s.v FROM "migrator_stage_428fda_vector_256" AS s WHERE t."id" = s.pk AND md5("t"."body") IS NOT DISTINCT FROM s.text_hash AND NOT (t."embedding" IS NULL AND s.v IS NULL) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'demo-local' AND st.pk = "t"."id"::text AND st.refreshed_at IS NULL)) RETURNING t."id"::text;
-- phase: index
-- set the side table's visibility map and statistics before the build [no-tx; SHARE UPDATE EXCLUSIVE on public.documents_embedding_v2]
VACUUM (ANALYZE) "public"."documents_embedding_v2";
-- memory for the index build (session setting) [no-tx; no table lock]
SET maintenance_work_mem = '1GB';
-- parallel workers for the build (session setting) [no-tx; no table lock]
SET max_parallel_maintenance_workers = 1;
-- build documents_embedding_v2_hnsw_idx without blocking writes [no-tx; SHARE UPDATE EXCLUSIVE on public.documents_embedding_v2]
CREATE INDEX CONCURRENTLY IF NOT EXISTS "documents_embedding_v2_hnsw_idx" ON "public"."documents_embedding_v2" USING hnsw ("embedding_v2" vector_cosine_ops) WITH (m = 16, ef_construction = 64);
-- phase: index (backward)
DROP INDEX CONCURRENTLY IF EXISTS "public"."documents_embedding_v2_hnsw_idx";
-- phase: cutover
-- point the view at embedding_v2 (local-hash-new@384:8d1ec6840d11) [tx; ACCESS EXCLUSIVE on public.documents_search]
CREATE OR REPLACE VIEW "public"."documents_search" AS SELECT "id", "title", "body", "migrator_side"."embedding_v2"::vector AS "embedding", 'local-hash-new@384:8d1ec6840d11'::text AS "embedding_model" FROM "public"."documents" JOIN "public"."documents_embedding_v2" AS "migrator_side" USING ("id");
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'documents_search', 'demo-local', 'embedding_v2', 'local-hash-new@384:8d1ec6840d11', '{"api_key_env": "MIGRATOR_LOCAL_KEY", "base_url": "http://127.0.0.1:8765/v1", "dimensions": 384, "max_inputs_per_request": 256, "max_tokens_per_input": 2048, "max_tokens_per_request": 300000, "name": "local-hash-new", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 384, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.documents_search');
-- change capture now also keeps embedding fresh (for rollback) instead of recording its stale vectors [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_demo_local_68651ed9_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''demo-local'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."documents_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding" IS NULL OR TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''demo-local'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: cutover (backward)
CREATE OR REPLACE VIEW "public"."documents_search" AS SELECT "id", "title", "body", "embedding"::vector AS "embedding", 'local-hash-old@256:971078742da6'::text AS "embedding_model" FROM "public"."documents";
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'documents_search', 'demo-local', 'embedding', 'local-hash-old@256:971078742da6', '{"api_key_env": "MIGRATOR_LOCAL_KEY", "base_url": "http://127.0.0.1:8765/v1", "dimensions": 256, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "local-hash-old", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 256, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.documents_search');
-- phase: rollback
-- point the view at embedding (local-hash-old@256:971078742da6) [tx; ACCESS EXCLUSIVE on public.documents_search]
CREATE OR REPLACE VIEW "public"."documents_search" AS SELECT "id", "title", "body", "embedding"::vector AS "embedding", 'local-hash-old@256:971078742da6'::text AS "embedding_model" FROM "public"."documents";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'documents_search', 'demo-local', 'embedding', 'local-hash-old@256:971078742da6', '{"api_key_env": "MIGRATOR_LOCAL_KEY", "base_url": "http://127.0.0.1:8765/v1", "dimensions": 256, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "local-hash-old", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 256, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.documents_search');
-- phase: rollback (backward)
CREATE OR REPLACE VIEW "public"."documents_search" AS SELECT "id", "title", "body", "migrator_side"."embedding_v2"::vector AS "embedding", 'local-hash-new@384:8d1ec6840d11'::text AS "embedding_model" FROM "public"."documents" JOIN "public"."documents_embedding_v2" AS "migrator_side" USING ("id");
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'documents_search', 'demo-local', 'embedding_v2', 'local-hash-new@384:8d1ec6840d11', '{"api_key_env": "MIGRATOR_LOCAL_KEY", "base_url": "http://127.0.0.1:8765/v1", "dimensions": 384, "max_inputs_per_request": 256, "max_tokens_per_input": 2048, "max_tokens_per_request": 300000, "name": "local-hash-new", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": true, "usd_per_million_tokens": null}'::jsonb, 'vector', 384, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.documents_search');
CREATE OR REPLACE FUNCTION "migrator"."migrator_demo_local_68651ed9_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''demo-local'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."body" IS DISTINCT FROM OLD."body";
    IF text_changed THEN
      DELETE FROM "public"."documents_embedding_v2" WHERE "id" = OLD."id";
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding" IS NULL OR TG_OP = ''INSERT'' OR text_changed THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''demo-local'', NEW."id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: finalize
-- record the phase finalizing (rollback refused from here) [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalizing', updated_at = now() WHERE name = 'demo-local';
-- detach the change-capture trigger [new tx; ACCESS EXCLUSIVE on public.documents]
DROP TRIGGER IF EXISTS "migrator_demo_local_68651ed9_capture" ON "public"."documents";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_demo_local_68651ed9_capture_fn"();
-- drop embedding (irreversible) [tx; ACCESS EXCLUSIVE on public.documents]
ALTER TABLE "public"."documents" DROP COLUMN IF EXISTS "embedding";
-- record the phase finalized [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalized', updated_at = now() WHERE name = 'demo-local';
-- phase: abort
-- detach the change-capture trigger [tx; ACCESS EXCLUSIVE on public.documents]
DROP TRIGGER IF EXISTS "migrator_demo_local_68651ed9_capture" ON "public"."documents";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_demo_local_68651ed9_capture_fn"();
-- drop public.documents_embedding_v2 and its index (the new vectors are discarded) [tx; ACCESS EXCLUSIVE on public.documents_embedding_v2]
DROP TABLE IF EXISTS "public"."documents_embedding_v2";
-- drop the view adopt created [tx; ACCESS EXCLUSIVE on public.documents_search]
DROP VIEW IF EXISTS "public"."documents_search";
-- remove the view's registry entry (adopt created it) [tx; ROW EXCLUSIVE on migrator.active_models]
DELETE FROM migrator.active_models WHERE view_schema = 'public' AND view_name = 'documents_search' AND migration = 'demo-local';
-- announce the change (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.documents_search');
-- record the phase aborted [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'aborted', updated_at = now() WHERE name = 'demo-local';
-- delete this migration's rows of migrator.changes [new tx; ROW EXCLUSIVE on migrator.changes]
DELETE FROM "migrator"."changes" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.batches [tx; ROW EXCLUSIVE on migrator.batches]
DELETE FROM "migrator"."batches" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.dead_letters [tx; ROW EXCLUSIVE on migrator.dead_letters]
DELETE FROM "migrator"."dead_letters" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.reports [tx; ROW EXCLUSIVE on migrator.reports]
DELETE FROM "migrator"."reports" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.stale_sources [tx; ROW EXCLUSIVE on migrator.stale_sources]
DELETE FROM "migrator"."stale_sources" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.bridges [tx; ROW EXCLUSIVE on migrator.bridges]
DELETE FROM "migrator"."bridges" WHERE migration = 'demo-local';
-- delete this migration's rows of migrator.pacing [tx; ROW EXCLUSIVE on migrator.pacing]
DELETE FROM "migrator"."pacing" WHERE migration = 'demo-local';
