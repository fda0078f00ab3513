{#
  One row per prediction (prediction_id), the first load kept, with each
  model's score out of model_predictions. Incremental: reads only the raw
  partitions modified since the last build (see changed_days).
#}
{#- merge_update_columns: a later copy of an event never overwrites the first (the update is a no-op). #}
{{ config(
    incremental_strategy='merge',
    unique_key='prediction_id',
    partition_by={'field': 'prediction_at', 'data_type': 'timestamp', 'granularity': 'day'},
    cluster_by=['selected_model'],
    on_schema_change='append_new_columns',
    merge_update_columns=['prediction_id']
) }}
{%- set days = changed_days(source('flit_ml_raw', 'raw_bnpl_prediction_logs'), 'prediction_timestamp', '_ingestion_timestamp', 'refreshed_at') %}

with raw as (
    select
        prediction_id,
        transaction_id,
        customer_id,
        prediction_timestamp as prediction_at,
        selected_model,
        selected_prediction,
        business_decision,
        risk_level,
        processing_time_ms,
        {%- for model in var('flit_models') %}
        safe_cast(json_value(model_predictions, '$.{{ model }}') as float64) as {{ model }}_score,
        {%- endfor %}
        _ingestion_timestamp as ingested_at
    from {{ source('flit_ml_raw', 'raw_bnpl_prediction_logs') }}
    where {{ in_days('prediction_timestamp', days) }}
)

select *, current_timestamp() as refreshed_at
from raw
qualify row_number() over (partition by prediction_id order by ingested_at) = 1
