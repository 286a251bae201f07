-- Run by the postgres image on its first start (empty data folder only):
-- the workspace database, next to Dagster's sf_assets_dagster.
CREATE DATABASE sf_assets_workspace OWNER sf_assets;
