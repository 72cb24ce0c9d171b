'use strict';
madrpc.register('ok', () => 1);
function broken( {
