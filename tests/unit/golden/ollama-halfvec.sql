-- phase: adopt
-- point the view at embedding (text-embedding-ada-002@1536:af712298284a) [tx; ACCESS EXCLUSIVE on public.kb_search]
CREATE OR REPLACE VIEW "public"."kb_search" AS SELECT "chunk_id", "doc_id", "content", "embedding"::vector AS "embedding", 'text-embedding-ada-002@1536:af712298284a'::text AS "embedding_model" FROM "public"."kb_chunks";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'kb_search', 'kb-nomic-halfvec', 'embedding', 'text-embedding-ada-002@1536:af712298284a', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-ada-002", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": false, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.kb_search');
-- phase: expand
-- add embedding_nomic (nullable, no default: no table rewrite) [tx; ACCESS EXCLUSIVE on public.kb_chunks]
ALTER TABLE "public"."kb_chunks" ADD COLUMN IF NOT EXISTS "embedding_nomic" halfvec(768);
-- change capture: clear stale new vectors, queue changed rows, record stale old ones [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''kb-nomic-halfvec'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."content" IS DISTINCT FROM OLD."content";
    IF text_changed THEN
      IF NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text THEN NEW."embedding_nomic" := NULL; END IF;
    ELSIF NOT (NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text) THEN
      NEW."embedding_nomic" := NULL; written := true;
    END IF;
    IF NEW."embedding" IS NOT NULL AND (text_changed = (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text)) THEN
      INSERT INTO migrator.stale_sources (migration, pk, reason) VALUES (''kb-nomic-halfvec'', NEW."chunk_id"::text, CASE WHEN text_changed THEN ''text changed, old vector not rewritten'' ELSE ''old vector written without its text'' END)
      ON CONFLICT (migration, pk) DO UPDATE SET reason = EXCLUDED.reason, detected_at = now(), batched_at = NULL, refreshed_at = NULL;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding_nomic" IS NULL THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''kb-nomic-halfvec'', NEW."chunk_id"::text);
  END IF;
  RETURN NEW;
END
';
-- attach the change-capture trigger [tx; SHARE ROW EXCLUSIVE on public.kb_chunks]
CREATE OR REPLACE TRIGGER "migrator_kb_nomic_halfvec_cd3c6a2a_capture" BEFORE INSERT OR UPDATE OF "content", "embedding_nomic", "embedding" ON "public"."kb_chunks" FOR EACH ROW EXECUTE FUNCTION "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"();
-- phase: expand (backward)
DROP TRIGGER IF EXISTS "migrator_kb_nomic_halfvec_cd3c6a2a_capture" ON "public"."kb_chunks";
DROP FUNCTION IF EXISTS "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"();
ALTER TABLE "public"."kb_chunks" DROP COLUMN IF EXISTS "embedding_nomic";
-- phase: backfill
-- workers: read a batch's current text and its hash [tx; ACCESS SHARE on public.kb_chunks]
SELECT "chunk_id", "chunk_id"::text, "content", md5("content") FROM "public"."kb_chunks" WHERE "chunk_id" > %(lo)s AND "chunk_id" <= %(hi)s AND "embedding_nomic" IS NULL ORDER BY 1;
-- workers: staging table for a binary COPY of the vectors [tx; no table lock]
CREATE TEMP TABLE IF NOT EXISTS "migrator_stage_428fda_halfvec_768" (pk bigint, text_hash text, v halfvec(768)) ON COMMIT DELETE ROWS;
-- workers: compare-and-set write (only rows whose text is unchanged) [tx; ROW EXCLUSIVE on public.kb_chunks]
UPDATE "public"."kb_chunks" AS t SET "embedding_nomic" = s.v FROM "migrator_stage_428fda_halfvec_768" AS s WHERE t."chunk_id" = s.pk AND md5("t"."content") = s.text_hash AND t."embedding_nomic" IS NULL RETURNING t."chunk_id"::text;
-- workers, source role: read rows whose embedding is NULL or recorded stale [tx; ACCESS SHARE on public.kb_chunks]
SELECT t."chunk_id", t."chunk_id"::text, "t"."content", md5("t"."content") FROM "public"."kb_chunks" AS t WHERE t."chunk_id" = ANY(%(ids)s::text[]::bigint[]) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'kb-nomic-halfvec' AND st.pk = "t"."chunk_id"::text AND st.refreshed_at IS NULL)) ORDER BY 1;
-- workers, source role: compare-and-set write of embedding with text-embedding-ada-002 [tx; ROW EXCLUSIVE on public.kb_chunks]
UPDATE "public"."kb_chunks" AS t SET "embedding" = s.v FROM "migrator_stage_428fda_vector_1536" AS s WHERE t."chunk_id" = s.pk AND md5("t"."content") IS NOT DISTINCT FROM s.text_hash AND NOT (t."embedding" IS NULL AND s.v IS NULL) AND (t."embedding" IS NULL OR EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = 'kb-nomic-halfvec' AND st.pk = "t"."chunk_id"::text AND st.refreshed_at IS NULL)) RETURNING t."chunk_id"::text;
-- phase: index
-- reclaim the backfill's dead row versions before the build locks autovacuum out [no-tx; SHARE UPDATE EXCLUSIVE on public.kb_chunks]
VACUUM (ANALYZE) "public"."kb_chunks";
-- memory for the index build (session setting) [no-tx; no table lock]
SET maintenance_work_mem = '4GB';
-- parallel workers for the build (session setting) [no-tx; no table lock]
SET max_parallel_maintenance_workers = 1;
-- build kb_chunks_embedding_nomic_hnsw_idx without blocking writes [no-tx; SHARE UPDATE EXCLUSIVE on public.kb_chunks]
CREATE INDEX CONCURRENTLY IF NOT EXISTS "kb_chunks_embedding_nomic_hnsw_idx" ON "public"."kb_chunks" USING hnsw ("embedding_nomic" halfvec_cosine_ops) WITH (m = 16, ef_construction = 64);
-- phase: index (backward)
DROP INDEX CONCURRENTLY IF EXISTS "public"."kb_chunks_embedding_nomic_hnsw_idx";
-- phase: cutover
-- drop the view (its embedding column changes type) [tx; ACCESS EXCLUSIVE on public.kb_search]
DROP VIEW IF EXISTS "public"."kb_search";
-- point the view at embedding_nomic (nomic-embed-text@768:2ba2f6919e46) [tx; ACCESS EXCLUSIVE on public.kb_search]
CREATE OR REPLACE VIEW "public"."kb_search" AS SELECT "chunk_id", "doc_id", "content", "embedding_nomic"::halfvec AS "embedding", 'nomic-embed-text@768:2ba2f6919e46'::text AS "embedding_model" FROM "public"."kb_chunks";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'kb_search', 'kb-nomic-halfvec', 'embedding_nomic', 'nomic-embed-text@768:2ba2f6919e46', '{"api_key_env": "OLLAMA_API_KEY", "base_url": "http://ollama.internal:11434/v1", "dimensions": 768, "max_inputs_per_request": 64, "max_tokens_per_input": 2048, "max_tokens_per_request": 300000, "name": "nomic-embed-text", "normalize": true, "overlong": "dead_letter", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": false, "usd_per_million_tokens": 0.0}'::jsonb, 'halfvec', 768, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.kb_search');
-- change capture now also keeps embedding fresh (for rollback) instead of recording its stale vectors [tx; no table lock]
CREATE OR REPLACE FUNCTION "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''kb-nomic-halfvec'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."content" IS DISTINCT FROM OLD."content";
    IF text_changed THEN
      IF NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text THEN NEW."embedding_nomic" := NULL; END IF;
    ELSIF NOT (NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text) THEN
      NEW."embedding_nomic" := NULL; written := true;
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding_nomic" IS NULL OR NEW."embedding" IS NULL THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''kb-nomic-halfvec'', NEW."chunk_id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: cutover (backward)
DROP VIEW IF EXISTS "public"."kb_search";
CREATE OR REPLACE VIEW "public"."kb_search" AS SELECT "chunk_id", "doc_id", "content", "embedding"::vector AS "embedding", 'text-embedding-ada-002@1536:af712298284a'::text AS "embedding_model" FROM "public"."kb_chunks";
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'kb_search', 'kb-nomic-halfvec', 'embedding', 'text-embedding-ada-002@1536:af712298284a', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-ada-002", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": false, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.kb_search');
-- phase: rollback
-- drop the view (its embedding column changes type) [tx; ACCESS EXCLUSIVE on public.kb_search]
DROP VIEW IF EXISTS "public"."kb_search";
-- point the view at embedding (text-embedding-ada-002@1536:af712298284a) [tx; ACCESS EXCLUSIVE on public.kb_search]
CREATE OR REPLACE VIEW "public"."kb_search" AS SELECT "chunk_id", "doc_id", "content", "embedding"::vector AS "embedding", 'text-embedding-ada-002@1536:af712298284a'::text AS "embedding_model" FROM "public"."kb_chunks";
-- record the active model in the registry [tx; ROW EXCLUSIVE on migrator.active_models]
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'kb_search', 'kb-nomic-halfvec', 'embedding', 'text-embedding-ada-002@1536:af712298284a', '{"api_key_env": "OPENAI_API_KEY", "base_url": null, "dimensions": 1536, "max_inputs_per_request": 2048, "max_tokens_per_input": 8192, "max_tokens_per_request": 300000, "name": "text-embedding-ada-002", "normalize": true, "overlong": "truncate", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": false, "usd_per_million_tokens": null}'::jsonb, 'vector', 1536, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
-- announce the switch (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.kb_search');
-- phase: rollback (backward)
DROP VIEW IF EXISTS "public"."kb_search";
CREATE OR REPLACE VIEW "public"."kb_search" AS SELECT "chunk_id", "doc_id", "content", "embedding_nomic"::halfvec AS "embedding", 'nomic-embed-text@768:2ba2f6919e46'::text AS "embedding_model" FROM "public"."kb_chunks";
INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES ('public', 'kb_search', 'kb-nomic-halfvec', 'embedding_nomic', 'nomic-embed-text@768:2ba2f6919e46', '{"api_key_env": "OLLAMA_API_KEY", "base_url": "http://ollama.internal:11434/v1", "dimensions": 768, "max_inputs_per_request": 64, "max_tokens_per_input": 2048, "max_tokens_per_request": 300000, "name": "nomic-embed-text", "normalize": true, "overlong": "dead_letter", "provider": "openai", "request_timeout_seconds": 30.0, "send_dimensions": false, "usd_per_million_tokens": 0.0}'::jsonb, 'halfvec', 768, now()) ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL;
SELECT pg_notify('migrator_active_model', 'public.kb_search');
CREATE OR REPLACE FUNCTION "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS '
DECLARE
  text_changed boolean := false;
  written boolean := false;
BEGIN
  IF coalesce(current_setting(''migrator.writer'', true), '''') = ''kb-nomic-halfvec'' THEN RETURN NEW; END IF;
  IF TG_OP = ''UPDATE'' THEN
    text_changed := NEW."content" IS DISTINCT FROM OLD."content";
    IF text_changed THEN
      IF NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text THEN NEW."embedding_nomic" := NULL; END IF;
    ELSIF NOT (NEW."embedding_nomic"::text IS NOT DISTINCT FROM OLD."embedding_nomic"::text) THEN
      NEW."embedding_nomic" := NULL; written := true;
    END IF;
    IF text_changed THEN
      IF NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text THEN NEW."embedding" := NULL; END IF;
    ELSIF NOT (NEW."embedding"::text IS NOT DISTINCT FROM OLD."embedding"::text) THEN
      NEW."embedding" := NULL; written := true;
    END IF;
    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;
  END IF;
  IF NEW."embedding_nomic" IS NULL OR NEW."embedding" IS NULL THEN
    INSERT INTO migrator.changes (migration, pk) VALUES (''kb-nomic-halfvec'', NEW."chunk_id"::text);
  END IF;
  RETURN NEW;
END
';
-- phase: finalize
-- record the phase finalizing (rollback refused from here) [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalizing', updated_at = now() WHERE name = 'kb-nomic-halfvec';
-- detach the change-capture trigger [new tx; ACCESS EXCLUSIVE on public.kb_chunks]
DROP TRIGGER IF EXISTS "migrator_kb_nomic_halfvec_cd3c6a2a_capture" ON "public"."kb_chunks";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"();
-- drop embedding (irreversible) [tx; ACCESS EXCLUSIVE on public.kb_chunks]
ALTER TABLE "public"."kb_chunks" DROP COLUMN IF EXISTS "embedding";
-- record the phase finalized [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'finalized', updated_at = now() WHERE name = 'kb-nomic-halfvec';
-- phase: abort
-- detach the change-capture trigger [tx; ACCESS EXCLUSIVE on public.kb_chunks]
DROP TRIGGER IF EXISTS "migrator_kb_nomic_halfvec_cd3c6a2a_capture" ON "public"."kb_chunks";
-- drop the change-capture function [tx; no table lock]
DROP FUNCTION IF EXISTS "migrator"."migrator_kb_nomic_halfvec_cd3c6a2a_capture_fn"();
-- drop embedding_nomic and its index (the new vectors are discarded) [tx; ACCESS EXCLUSIVE on public.kb_chunks]
ALTER TABLE "public"."kb_chunks" DROP COLUMN IF EXISTS "embedding_nomic";
-- drop the view adopt created [tx; ACCESS EXCLUSIVE on public.kb_search]
DROP VIEW IF EXISTS "public"."kb_search";
-- remove the view's registry entry (adopt created it) [tx; ROW EXCLUSIVE on migrator.active_models]
DELETE FROM migrator.active_models WHERE view_schema = 'public' AND view_name = 'kb_search' AND migration = 'kb-nomic-halfvec';
-- announce the change (NOTIFY) [tx; no table lock]
SELECT pg_notify('migrator_active_model', 'public.kb_search');
-- record the phase aborted [tx; ROW EXCLUSIVE on migrator.migrations]
UPDATE migrator.migrations SET phase = 'aborted', updated_at = now() WHERE name = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.changes [new tx; ROW EXCLUSIVE on migrator.changes]
DELETE FROM "migrator"."changes" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.batches [tx; ROW EXCLUSIVE on migrator.batches]
DELETE FROM "migrator"."batches" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.dead_letters [tx; ROW EXCLUSIVE on migrator.dead_letters]
DELETE FROM "migrator"."dead_letters" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.reports [tx; ROW EXCLUSIVE on migrator.reports]
DELETE FROM "migrator"."reports" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.stale_sources [tx; ROW EXCLUSIVE on migrator.stale_sources]
DELETE FROM "migrator"."stale_sources" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.bridges [tx; ROW EXCLUSIVE on migrator.bridges]
DELETE FROM "migrator"."bridges" WHERE migration = 'kb-nomic-halfvec';
-- delete this migration's rows of migrator.pacing [tx; ROW EXCLUSIVE on migrator.pacing]
DELETE FROM "migrator"."pacing" WHERE migration = 'kb-nomic-halfvec';
